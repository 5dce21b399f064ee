// Drives an official Tencent Cloud Node.js SDK through the gateway for the client
// matrix of tests/sdk.rs: reads a JSON list of cells on stdin, makes each call exactly
// as an application would (only the endpoint, protocol, method and signature changed),
// and prints one JSON line per cell. It judges nothing (tests/sdk.rs does) and must
// not work around an SDK's behaviour: a cell that fails here fails for users too.
//
// usage: node call.js SDK_DIR intl|cn < cells.json
//   SDK_DIR holds node_modules with tencentcloud-sdk-nodejs-intl-en and
//   tencentcloud-sdk-nodejs (scripts/test installs them from tests/sdk/node/).
// A cell: {"id", "endpoint", "protocol": "http"|"https", "sign": null (the SDK's
//   default) | "TC3-HMAC-SHA256" | "HmacSHA256" | "HmacSHA1", "method": "POST"|"GET",
//   "secret_id", "secret_key", "client": "typed"|"common", "action", "params": {}}
// A line: {"id", "ok": true, "response"} or {"id", "ok": false, "exception", "code",
//   "message", "request_id"}. A private CA is trusted through NODE_EXTRA_CA_CERTS,
//   set by the caller, as an application would.
"use strict";

const path = require("path");
const { createRequire } = require("module");

const [sdkDir, flavour] = process.argv.slice(2);
const sdkRequire = createRequire(path.join(path.resolve(sdkDir), "package.json"));

// Only faceid and common are loaded: the packages' index modules load every service.
function intlClient(cell) {
  const common = sdkRequire("tencentcloud-sdk-nodejs-intl-en/tencentcloud/common");
  const faceid = sdkRequire("tencentcloud-sdk-nodejs-intl-en/tencentcloud/faceid/v20180301");
  const credential = new common.Credential(cell.secret_id, cell.secret_key);
  const httpProfile = new common.HttpProfile();
  httpProfile.endpoint = cell.endpoint;
  httpProfile.protocol = cell.protocol + "://";
  httpProfile.reqMethod = cell.method;
  const profile = new common.ClientProfile(cell.sign || undefined, httpProfile);
  if (cell.client === "common") {
    const client = new common.CommonClient("faceid.intl.tencentcloudapi.com", "2018-03-01", credential, "ap-singapore", profile);
    return new Promise((resolve, reject) =>
      client.request(cell.action, cell.params, (err, data) => (err ? reject(err) : resolve(data))));
  }
  const client = new faceid.Client(credential, "ap-singapore", profile);
  const request = new faceid.Models[cell.action + "Request"]();
  request.from_json_string(JSON.stringify(cell.params));
  return new Promise((resolve, reject) =>
    client[cell.action](request, (err, data) => (err ? reject(err) : resolve(JSON.parse(data.to_json_string())))));
}

function cnClient(cell) {
  const common = sdkRequire("tencentcloud-sdk-nodejs/tencentcloud/common");
  const faceid = sdkRequire("tencentcloud-sdk-nodejs/tencentcloud/services/faceid").faceid.v20180301;
  const profile = {
    httpProfile: { endpoint: cell.endpoint, protocol: cell.protocol + "://", reqMethod: cell.method },
  };
  if (cell.sign) profile.signMethod = cell.sign;
  const config = {
    credential: { secretId: cell.secret_id, secretKey: cell.secret_key },
    region: "ap-guangzhou",
    profile,
  };
  if (cell.client === "common") {
    return new common.CommonClient("faceid.tencentcloudapi.com", "2018-03-01", config).request(cell.action, cell.params);
  }
  return new faceid.Client(config)[cell.action](cell.params);
}

async function run(cell) {
  try {
    const response = await (flavour === "intl" ? intlClient(cell) : cnClient(cell));
    return { id: cell.id, ok: true, response };
  } catch (e) {
    return {
      id: cell.id,
      ok: false,
      exception: e && e.constructor ? e.constructor.name : typeof e,
      code: (e && e.code) || null,
      message: e && e.message !== undefined ? String(e.message) : String(e),
      request_id: (e && e.requestId) || null,
    };
  }
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const cells = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  // One call at a time: the cells are independent, and sequential output keeps a
  // failing cell's line next to its neighbours in the log.
  for (const cell of cells) {
    process.stdout.write(JSON.stringify(await run(cell)) + "\n");
  }
}

main().catch((e) => {
  process.stderr.write(String((e && e.stack) || e) + "\n");
  process.exit(1);
});
