"""The write path's side of freshviews: getting every committed change into the change log."""

from freshviews.publish.publisher import Publisher, get_publisher

__all__ = ["Publisher", "get_publisher"]
