"""The Python loop users write: one requests.Session (keep-alive), POST /api/token/refresh every
INTERVAL seconds (default 1), the token written atomically (temp file + rename); nothing wakes it in
between. Env: LS_URL, LS_PAT, OUT, INTERVAL."""
import os
import time

import requests

url = os.environ["LS_URL"] + "/api/token/refresh"
out = os.environ["OUT"]
body = {"refresh": os.environ["LS_PAT"]}
interval = float(os.environ.get("INTERVAL", "1"))
session = requests.Session()
n = 0
while True:
    try:
        r = session.post(url, json=body, timeout=10)
        r.raise_for_status()
        token = r.json()["access"]
    except (requests.RequestException, KeyError, ValueError):
        time.sleep(interval)
        continue
    with open(out + "/token.tmp", "w") as f:
        f.write(token)
    os.replace(out + "/token.tmp", out + "/token")
    n += 1
    with open(out + "/count", "w") as f:
        f.write(str(n))
    time.sleep(interval)
