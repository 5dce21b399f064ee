"""Calls eKYC actions through the gateway with an official Tencent Cloud Python SDK
and prints each outcome as one line of JSON, for tests/sdk.rs. It judges nothing (the
Rust tests do) and must not work around an SDK's behaviour: a call that fails here
fails for users too.

usage: call.py ENDPOINT SECRET_ID SECRET_KEY ACTION PARAMS_JSON [--common] [--clock-offset SECONDS]
               [--sign-method HmacSHA256]
       call.py --cells < cells.json

--common uses the SDK's CommonClient (any action name); otherwise the typed FaceidClient.
--clock-offset shifts the SDK's clock (time.time) to test signature expiry.
--cells runs the client matrix: a JSON list of cells on stdin, one line out per cell, as
tests/sdk/call.js does for Node. A cell: {"id", "endpoint", "protocol": "http"|"https",
"sign": null (the SDK's default) | "TC3-HMAC-SHA256" | "HmacSHA256" | "HmacSHA1",
"method": "POST"|"GET", "secret_id", "secret_key", "client": "typed"|"common", "action",
"params": {}, "ca": null | PEM file}; "ca" goes to HttpProfile(certification=...), the
SDK's own option: it passes certifi's bundle to requests explicitly otherwise, so
REQUESTS_CA_BUNDLE is ignored.
"""
import json
import sys
import time

args = sys.argv[1:]
if args == ["--cells"]:
    from tencentcloud.common import credential
    from tencentcloud.common.common_client import CommonClient
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.faceid.v20180301 import faceid_client, models

    def run(cell):
        cred = credential.Credential(cell["secret_id"], cell["secret_key"])
        http = HttpProfile(
            endpoint=cell["endpoint"], protocol=cell["protocol"], reqMethod=cell["method"], certification=cell.get("ca")
        )
        profile = ClientProfile(signMethod=cell["sign"], httpProfile=http) if cell["sign"] else ClientProfile(httpProfile=http)
        if cell["client"] == "common":
            client = CommonClient("faceid", "2018-03-01", cred, "ap-singapore", profile=profile)
            return client.call_json(cell["action"], cell["params"])["Response"]
        client = faceid_client.FaceidClient(cred, "ap-singapore", profile)
        request = getattr(models, cell["action"] + "Request")()
        request.from_json_string(json.dumps(cell["params"]))
        return json.loads(getattr(client, cell["action"])(request).to_json_string())

    for cell in json.load(sys.stdin):
        try:
            out = {"id": cell["id"], "ok": True, "response": run(cell)}
        except Exception as e:  # the type's name is part of what the test checks
            get = lambda name: getattr(e, name)() if hasattr(e, name) else None
            out = {
                "id": cell["id"],
                "ok": False,
                "exception": type(e).__name__,
                "code": get("get_code"),
                "message": get("get_message") or str(e),
                "request_id": get("get_request_id"),
            }
        print(json.dumps(out), flush=True)
    sys.exit(0)

common = "--common" in args
offset = 0
if "--clock-offset" in args:
    i = args.index("--clock-offset")
    offset = int(args[i + 1])
    del args[i : i + 2]
sign_method = "TC3-HMAC-SHA256"
if "--sign-method" in args:
    i = args.index("--sign-method")
    sign_method = args[i + 1]
    del args[i : i + 2]
args = [a for a in args if a != "--common"]
endpoint, secret_id, secret_key, action, params = args

if offset:
    real_time = time.time
    time.time = lambda: real_time() + offset

from tencentcloud.common import credential
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.faceid.v20180301 import faceid_client, models

cred = credential.Credential(secret_id, secret_key)
profile = ClientProfile(signMethod=sign_method, httpProfile=HttpProfile(endpoint=endpoint, protocol="http"))
try:
    if common:
        client = CommonClient("faceid", "2018-03-01", cred, "ap-singapore", profile=profile)
        response = client.call_json(action, json.loads(params))["Response"]
    else:
        client = faceid_client.FaceidClient(cred, "ap-singapore", profile)
        request = getattr(models, action + "Request")()
        request.from_json_string(params)
        response = json.loads(getattr(client, action)(request).to_json_string())
    print(json.dumps({"ok": True, "response": response}))
except TencentCloudSDKException as e:
    print(json.dumps({"ok": False, "code": e.get_code(), "message": e.get_message(), "request_id": e.get_request_id()}))
