"""`foundry serve`: an OpenAI-compatible HTTP API and a web chat page over the chat Engine."""

from .app import create_app
from .server import ServerThread, bind_socket, make_server
from .scheduler import Scheduler

__all__ = ["create_app", "make_server", "bind_socket", "ServerThread", "Scheduler"]
