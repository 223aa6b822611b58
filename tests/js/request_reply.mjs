// nats.js (npm "nats") through the sidecar: request/reply with headers, and no-responders.
// Usage: node request_reply.mjs <sidecar-url> <direct-url>; prints one JSON line of results.
import { connect, headers, StringCodec, ErrorCode } from "nats";

const [sidecarUrl, directUrl] = process.argv.slice(2);
const sc = StringCodec();
const results = {};

const app = await connect({ servers: sidecarUrl, reconnect: false, timeout: 3000 });
const direct = await connect({ servers: directUrl, reconnect: false, timeout: 3000 });

// A responder behind the sidecar, a requester direct, and the other way round.
const svc = app.subscribe("js.svc.app");
(async () => {
  for await (const m of svc) {
    const h = headers();
    h.set("X-Seen", m.headers ? m.headers.get("X-Req") : "none");
    m.respond(sc.encode("app:" + sc.decode(m.data)), { headers: h });
  }
})();
const dsvc = direct.subscribe("js.svc.direct");
(async () => {
  for await (const m of dsvc) {
    const h = headers();
    h.set("X-Seen", m.headers ? m.headers.get("X-Req") : "none");
    m.respond(sc.encode("direct:" + sc.decode(m.data)), { headers: h });
  }
})();
await app.flush();
await direct.flush();

const h1 = headers();
h1.set("X-Req", "from-direct");
const r1 = await direct.request("js.svc.app", sc.encode("one"), { timeout: 3000, headers: h1 });
results.toApp = { data: sc.decode(r1.data), seen: r1.headers.get("X-Seen") };

const h2 = headers();
h2.set("X-Req", "from-app");
const r2 = await app.request("js.svc.direct", sc.encode("two"), { timeout: 3000, headers: h2 });
results.toDirect = { data: sc.decode(r2.data), seen: r2.headers.get("X-Seen") };

const started = Date.now();
try {
  await app.request("js.nobody.home", sc.encode("?"), { timeout: 5000 });
  results.noResponders = { error: null };
} catch (err) {
  results.noResponders = { code: err.code, isNoResponders: err.code === ErrorCode.NoResponders, ms: Date.now() - started };
}

// A request the sidecar refuses (the test opened js.refused's breaker; a responder exists upstream).
const refusedAt = Date.now();
try {
  await app.request("js.refused", sc.encode("?"), { timeout: 5000 });
  results.refused = { error: null };
} catch (err) {
  results.refused = { code: err.code, isNoResponders: err.code === ErrorCode.NoResponders, ms: Date.now() - refusedAt, message: String(err.message) };
}

await app.drain();
await direct.drain();
console.log(JSON.stringify(results));
