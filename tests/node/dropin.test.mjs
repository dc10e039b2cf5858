// Node's SDKs against bedrock-proxy, changing nothing but the endpoint:
// `@aws-sdk/client-bedrock-runtime` (HTTP/2, signing `:authority`) with a
// proxy-issued access key pair, over cleartext HTTP/2 and over TLS (ALPN);
// `openai` and `@anthropic-ai/sdk` against demo mode. Run with `node --test`
// after `npm ci`; binaries come from $BEDROCK_BIN_DIR (default target/debug).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  BedrockRuntimeClient,
  ConverseCommand,
  ConverseStreamCommand,
  InvokeModelCommand,
} from "@aws-sdk/client-bedrock-runtime";
import { NodeHttp2Handler } from "@smithy/node-http-handler";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const binDir = process.env.BEDROCK_BIN_DIR ?? path.join(root, "target", "debug");
const HAIKU = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
// A key pair as `bedrock-proxy new-access-key` prints them.
const ACCESS_KEY = { accessKeyId: "BPXKNODETEST0001", secretAccessKey: "bm9kZS10ZXN0LXNlY3JldC1rZXktZm9yLXRoZS1wcm94eQ==" };

/** Starts bedrock-proxy and resolves once it prints `ready`, with the URLs it printed. */
function startProxy(args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(path.join(binDir, "bedrock-proxy"), args, { stdio: ["ignore", "pipe", "pipe"] });
    const urls = {};
    let out = "", err = "";
    proc.stderr.on("data", (d) => (err += d));
    proc.stdout.on("data", (d) => {
      out += d;
      for (const line of out.split("\n")) {
        const m = line.match(/^(\S+) listening on (\S+)$/);
        if (m) urls[m[1]] = m[2];
        if (line.trim() === "ready") resolve({ proc, api: urls["bedrock-proxy"], admin: urls.admin });
      }
    });
    proc.on("exit", (code) => reject(new Error(`bedrock-proxy exited with ${code}: ${err}`)));
  });
}

function stop(server) {
  if (server && server.proc.exitCode === null) server.proc.kill("SIGTERM");
}

const dir = mkdtempSync(path.join(tmpdir(), "bedrock-node-"));
let demo, keyed, keyedTls, ca;

function keyedConfig(tls) {
  return `
[server]
listen = "127.0.0.1:0"
auth = "keys"
${tls ? `tls_cert = "${tls.cert}"\ntls_key = "${tls.key}"` : ""}
[admin]
listen = "127.0.0.1:0"
[logging]
level = "warn"
[upstreams.sim]
kind = "simulator"
[[routes]]
name = "haiku"
aliases = ["haiku"]
models = ["${HAIKU}", "anthropic.claude-3-5-haiku-20241022-v1:0"]
upstream = "sim"
[[keys]]
tenant = "node"
access_key_id = "${ACCESS_KEY.accessKeyId}"
secret_access_key = "${ACCESS_KEY.secretAccessKey}"
`;
}

before(async () => {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert], { stdio: "ignore" });
  ca = readFileSync(cert);
  writeFileSync(path.join(dir, "keyed.toml"), keyedConfig(null));
  writeFileSync(path.join(dir, "keyed-tls.toml"), keyedConfig({ cert, key }));
  [demo, keyed, keyedTls] = await Promise.all([
    startProxy(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]),
    startProxy(["--config", path.join(dir, "keyed.toml")]),
    startProxy(["--config", path.join(dir, "keyed-tls.toml")]),
  ]);
});

after(() => [demo, keyed, keyedTls].forEach(stop));

/** A Bedrock Runtime client as an app builds it, recording what it signed. */
function bedrock(endpoint, { credentials = ACCESS_KEY, requestHandler } = {}) {
  const client = new BedrockRuntimeClient({ endpoint, region: "us-east-2", credentials, maxAttempts: 1, requestHandler });
  const signed = [];
  client.middlewareStack.add(
    (next) => async (args) => {
      signed.push(args.request.headers.authorization);
      return next(args);
    },
    { step: "finalizeRequest", priority: "low", name: "recordSignature" },
  );
  return { client, signed };
}

const user = (text) => [{ role: "user", content: [{ text }] }];

async function bedrockCalls(endpoint, requestHandler) {
  const { client, signed } = bedrock(endpoint, { requestHandler });

  const converse = await client.send(new ConverseCommand({ modelId: "haiku", messages: user("Hello over HTTP/2"),
    inferenceConfig: { maxTokens: 40 } }));
  assert.ok(converse.output.message.content[0].text);
  assert.ok(["end_turn", "max_tokens"].includes(converse.stopReason));

  const stream = await client.send(new ConverseStreamCommand({ modelId: HAIKU, messages: user("Stream over HTTP/2"),
    inferenceConfig: { maxTokens: 40 } }));
  let text = "", stop;
  for await (const event of stream.stream) {
    if (event.contentBlockDelta) text += event.contentBlockDelta.delta.text ?? "";
    if (event.messageStop) stop = event.messageStop.stopReason;
  }
  assert.ok(text && stop);

  const invoked = await client.send(new InvokeModelCommand({ modelId: HAIKU, contentType: "application/json",
    body: JSON.stringify({ anthropic_version: "bedrock-2023-05-31", max_tokens: 40,
      messages: [{ role: "user", content: "Invoke over HTTP/2" }] }) }));
  const body = JSON.parse(new TextDecoder().decode(invoked.body));
  assert.equal(body.type, "message");
  assert.ok(body.content[0].text);

  // HTTP/2 it was: the SDK signs `:authority` (not `host`) only on HTTP/2.
  assert.equal(signed.length, 3);
  for (const authorization of signed) assert.match(authorization, /SignedHeaders=:authority;/);
}

test("AWS SDK with a proxy-issued key pair over cleartext HTTP/2", async () => {
  await bedrockCalls(keyed.api);
});

test("AWS SDK with a proxy-issued key pair over TLS (HTTP/2 by ALPN)", async () => {
  assert.match(keyedTls.api, /^https:/);
  await bedrockCalls(keyedTls.api, new NodeHttp2Handler({ nodeHttp2ConnectOptions: { ca } }));
});

test("AWS SDK with a wrong secret is refused in Bedrock's shape", async () => {
  const { client } = bedrock(keyed.api, { credentials: { ...ACCESS_KEY, secretAccessKey: "wrong" } });
  await assert.rejects(client.send(new ConverseCommand({ modelId: "haiku", messages: user("x") })), (e) => {
    assert.equal(e.$metadata.httpStatusCode, 403);
    assert.equal(e.name, "AccessDeniedException");
    assert.match(e.message, /signature/);
    return true;
  });
});

test("openai: one call and one stream", async () => {
  const client = new OpenAI({ baseURL: `${demo.api}/v1`, apiKey: "demo", maxRetries: 0 });
  const r = await client.chat.completions.create({ model: "haiku",
    messages: [{ role: "system", content: "You are terse." }, { role: "user", content: "Say hello." }], max_tokens: 40 });
  assert.equal(r.object, "chat.completion");
  assert.ok(r.choices[0].message.content);
  assert.ok(r.usage.prompt_tokens > 0);

  const stream = await client.chat.completions.create({ model: "haiku-4-5", stream: true,
    stream_options: { include_usage: true }, messages: [{ role: "user", content: "Count to five." }], max_tokens: 60 });
  let text = "", finish, usage;
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(text && ["stop", "length"].includes(finish));
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);

  const structured = await client.chat.completions.create({ model: "haiku-4-5", messages: [{ role: "user", content: "Paris?" }],
    response_format: { type: "json_schema", json_schema: { name: "City", strict: true, schema: { type: "object",
      properties: { city: { type: "string" }, country: { type: "string" } }, required: ["city", "country"], additionalProperties: false } } } });
  const city = JSON.parse(structured.choices[0].message.content);
  assert.equal(typeof city.city, "string");
  assert.equal(typeof city.country, "string");
});

test("@anthropic-ai/sdk: one call and one stream", async () => {
  const client = new Anthropic({ baseURL: demo.api, apiKey: "demo", maxRetries: 0 });
  const message = await client.messages.create({ model: "haiku", max_tokens: 64,
    messages: [{ role: "user", content: "Hello, Claude" }] });
  assert.equal(message.type, "message");
  assert.ok(message.content[0].text);
  assert.ok(message.usage.input_tokens > 0);

  const stream = client.messages.stream({ model: "haiku-4-5", max_tokens: 2048,
    thinking: { type: "enabled", budget_tokens: 1024 }, messages: [{ role: "user", content: "Why is the sky blue?" }] });
  let thinking = "", text = "";
  stream.on("thinking", (delta) => (thinking += delta));
  stream.on("text", (delta) => (text += delta));
  const final = await stream.finalMessage();
  assert.ok(thinking && text);
  assert.equal(final.content[0].type, "thinking");
  assert.equal(final.content[0].thinking, thinking);
  assert.ok(final.content[0].signature);
  assert.equal(final.content[1].text, text);
});
