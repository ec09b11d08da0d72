"""Credentials → ``Principal`` (access.py): API tokens from a file (tokens.py), JWTs (jwts.py),
both reread on change (watched.py), behind one ``Authenticator`` (authenticator.py). The web
layer's guard (web/guard.py) calls it; the CLI makes new tokens with ``tokens.new_token``."""
