"""PostgreSQL's own change log as a change source (needs psycopg2: ``pip install 'freshviews[pglog]'``).

Writes from anywhere (an ingest job, a cron script, an operator's ``psql``) reach the cache: a logical
replication slot (``pgoutput``, a publication over the watched tables) is read into the change log with the
same changes the SQLAlchemy capture writes, so views' declared dependencies work unchanged. The subscriber runs
it when ``FRESHVIEWS_PGLOG_URL`` is set; ``freshviews pglog`` runs it alone, and ``freshviews pglog --drop``
removes the slot and the publication (a forgotten slot keeps WAL on the database's disk).
"""

from freshviews.pglog.settings import PglogSettings

# The source itself (freshviews.pglog.source.LogSource) imports psycopg2; the settings, which every subscriber
# reads, must not.
__all__ = ["PglogSettings"]
