"""The official label-studio-sdk client holding the PAT. The SDK refreshes lazily: every request
asks TokensClientExt.api_key, which POSTs /api/token/refresh/ (on the client's httpx keep-alive
connection) only once the cached access token's exp has passed. The SDK itself has no timer: this
loop asks every POLL seconds (default 1), as an application making one API call a second would
(without making the call), and publishes each new token atomically. Env: LS_URL, LS_PAT, OUT, POLL.

So that the polls are not charged as refresh cost, the loop splits its own CPU time
(time.process_time: user + system, all threads) into the iterations that refreshed and the ones that
only asked, and writes the running totals to OUT/stats (JSON) at every refresh: refresh_cpu_s covers
an iteration from the return of the previous sleep to the published token; everything else, the
sleeps' own system calls included, is poll_cpu_s."""
import json
import os
import time

from label_studio_sdk import LabelStudio

out = os.environ["OUT"]
poll = float(os.environ.get("POLL", "1"))
client = LabelStudio(base_url=os.environ["LS_URL"], api_key=os.environ["LS_PAT"])
tokens = client._client_wrapper._tokens_client  # what get_headers() uses for every request
last = None
n = polls = 0
refresh_cpu = poll_cpu = 0.0
mark = time.process_time()
while True:
    token = tokens.api_key
    refreshed = token != last
    if refreshed:
        with open(out + "/token.tmp", "w") as f:
            f.write(token)
        os.replace(out + "/token.tmp", out + "/token")
        now = time.process_time()
        refresh_cpu += now - mark
        mark = now
        n += 1
        last = token
        stats = {"refreshes": n, "refresh_cpu_s": refresh_cpu, "polls": polls, "poll_cpu_s": poll_cpu}
        with open(out + "/stats.tmp", "w") as f:
            json.dump(stats, f)
        os.replace(out + "/stats.tmp", out + "/stats")
        with open(out + "/count", "w") as f:
            f.write(str(n))
    time.sleep(poll)
    now = time.process_time()
    # The sleep (and, after a refresh, the stats writes) belong to the idle side.
    polls += not refreshed
    poll_cpu += now - mark
    mark = now
