"""Container health check: exit 0 when the service's GET /healthz answers 200, else 1.

Standard library only, so the image needs no curl. It asks the address the service listens
on (MEGALOAD_HOST, a wildcard address meaning loopback) at MEGALOAD_PORT (default 8000).
/healthz is open: no token is needed.
"""

import os
import sys
import urllib.error
import urllib.request

HEALTH_PATH = "/healthz"


def health_url() -> str:
    host = os.environ.get("MEGALOAD_HOST", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = os.environ.get("MEGALOAD_PORT", "").strip() or "8000"
    return f"http://{host}:{port}{HEALTH_PATH}"


def main() -> int:
    url = health_url()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url} answered {response.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
