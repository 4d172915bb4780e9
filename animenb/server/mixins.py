"""`HandlerMixin`, the base of the request handlers' mixins (`AuthMixin`, `JSONErrorMixin`, ...).

For the type checker a mixin is a tornado `RequestHandler` (what it is always mixed into, so it may use
`self.request`, `self.set_header`, ...); at run time it is a plain `object`, so each handler's method
order stays its own bases'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tornado.web import RequestHandler as HandlerMixin
else:
    HandlerMixin = object

__all__ = ["HandlerMixin"]
