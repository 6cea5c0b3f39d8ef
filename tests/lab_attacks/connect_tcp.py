# Attack (token __TOKEN__): connect to a port of the lab's machine on loopback.
import socket

try:
    socket.create_connection(("127.0.0.1", __PORT__), timeout=3)
    print("connected")
except OSError as e:
    print("refused:", type(e).__name__)
