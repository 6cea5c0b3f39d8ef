# Attack (token __TOKEN__): send a datagram to a port of the lab's machine on loopback.
import socket

try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hello", ("127.0.0.1", __PORT__))
    print("sent")
except OSError as e:
    print("refused:", type(e).__name__)
