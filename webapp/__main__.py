"""`python -m webapp`: serve the app with waitress on HOST:PORT (never the debug server)."""
from __future__ import annotations

import logging

from waitress import serve

from runtime.settings import load_dotenv
from webapp import create_app
from webapp.settings import WebSettings


def main() -> None:
    """Read .env and the environment, start the engine loading, and serve."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_dotenv()
    settings = WebSettings.from_env()
    app = create_app(settings)
    logging.getLogger("webapp").info("serving on http://%s:%d", settings.host, settings.port)
    serve(app, host=settings.host, port=settings.port, threads=settings.threads,
          max_request_body_size=app.config["MAX_CONTENT_LENGTH"],
          channel_request_lookahead=1,  # lets a streaming answer notice that its client went away
          ident="internvl-webapp")


if __name__ == "__main__":
    main()
