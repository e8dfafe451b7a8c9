"""The official label-studio-sdk client holding the PAT. The SDK refreshes lazily: every request
asks TokensClientExt.api_key, which POSTs /api/token/refresh/ (on the client's httpx keep-alive
connection) only once the cached access token's exp has passed. This loop asks once a second, as an
application making one API call a second would (without making the call), and publishes each new
token atomically. Env: LS_URL, LS_PAT, OUT."""
import os
import time

from label_studio_sdk import LabelStudio

out = os.environ["OUT"]
client = LabelStudio(base_url=os.environ["LS_URL"], api_key=os.environ["LS_PAT"])
tokens = client._client_wrapper._tokens_client  # what get_headers() uses for every request
last = None
n = 0
while True:
    token = tokens.api_key
    if token != last:
        with open(out + "/token.tmp", "w") as f:
            f.write(token)
        os.replace(out + "/token.tmp", out + "/token")
        n += 1
        with open(out + "/count", "w") as f:
            f.write(str(n))
        last = token
    time.sleep(1)
