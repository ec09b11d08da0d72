"""GET /ws: websocket subscriptions, the whole history then live (the protocol is in README.md).

``hub`` holds the process's sockets and the live feed, ``subscription`` one variable on one
socket (catch-up, then live), ``direct`` the fenced write straight to uvicorn's transport.
"""
