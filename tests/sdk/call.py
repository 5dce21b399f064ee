"""Calls an eKYC action through the gateway with an official Tencent Cloud Python SDK
and prints the outcome as one line of JSON, for tests/sdk.rs.

usage: call.py ENDPOINT SECRET_ID SECRET_KEY ACTION PARAMS_JSON [--common] [--clock-offset SECONDS]
               [--sign-method HmacSHA256]

--common uses the SDK's CommonClient (any action name); otherwise the typed FaceidClient.
--clock-offset shifts the SDK's clock (time.time) to test signature expiry.
"""
import json
import sys
import time

args = sys.argv[1:]
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
