"""GET /api/anime/models: the checkpoints, VAEs, LoRAs and embeddings this server's jobs can name.

Names, file names, sizes and hashes (SHA-256 and A1111's short hash), never absolute paths. The
first listing hashes every file (seconds per GB); it runs off the event loop and later listings
reuse the hashes of files that have not changed.
"""

from __future__ import annotations

import tornado.ioloop

from animenb import model_files

from .handlers import BaseHandler


class ModelsHandler(BaseHandler):
    async def get(self) -> None:
        listing = await tornado.ioloop.IOLoop.current().run_in_executor(None, model_files.listing)
        self.write_json({"profile": self.service.models, **listing})
