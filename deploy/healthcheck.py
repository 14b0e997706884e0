"""The containers' health check, also run as is outside a container: `python3 deploy/healthcheck.py [URL]`.

Exits 0 when `GET <URL>` answers 200 with `"status": "ok"` within 4 s, 1 otherwise (the reason on stderr). The URL
defaults to the service's health route on this machine, `http://127.0.0.1:$ROBOPT_PORT/api/v1/health` (port 8000
when unset); a URL argument checks another server, e.g. the web page's dev server. Standard library only: the
slim images carry no curl.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def main(argv: list[str]) -> int:
    """Check one URL; 0 when healthy."""
    url = (
        argv[1]
        if len(argv) > 1
        else f"http://127.0.0.1:{os.environ.get('ROBOPT_PORT', '8000')}/api/v1/health"
    )
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read()
            kind = response.headers.get("content-type", "")
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if "json" in kind and json.loads(body).get("status") != "ok":
        print(f"unhealthy: {url} answered {body[:200]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
