// nats.go (Debian's golang-github-nats-io-go-nats-dev) through the sidecar, as an unmodified application.
// Usage: natsgo_client <sidecar-url> <direct-url> <count>; prints one JSON line of results.
//
// - request/reply with headers both ways (responder behind the sidecar, requester direct, and back);
// - no responders: nats.ErrNoResponders, and how long it took;
// - a request the sidecar refuses (the test opened go.refused's breaker; a responder exists upstream): the
//   same error, as fast;
// - a queue group of two members behind the sidecar: each message to exactly one of them;
// - <count> publishes then Flush(): the test counts them on the hub;
// - Drain() at the end, as a well-behaved service would stop.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func responder(nc *nats.Conn, subject, prefix string) {
	_, err := nc.Subscribe(subject, func(m *nats.Msg) {
		reply := nats.NewMsg(m.Reply)
		reply.Data = []byte(prefix + string(m.Data))
		reply.Header.Set("X-Seen", m.Header.Get("X-Req"))
		must(m.RespondMsg(reply))
	})
	must(err)
}

func request(nc *nats.Conn, subject, data, tag string) map[string]string {
	msg := nats.NewMsg(subject)
	msg.Data = []byte(data)
	msg.Header.Set("X-Req", tag)
	resp, err := nc.RequestMsg(msg, 3*time.Second)
	must(err)
	return map[string]string{"data": string(resp.Data), "seen": resp.Header.Get("X-Seen")}
}

func main() {
	sidecarURL, directURL := os.Args[1], os.Args[2]
	count, err := strconv.Atoi(os.Args[3])
	must(err)
	results := map[string]any{"version": nats.Version}

	app, err := nats.Connect(sidecarURL, nats.NoReconnect(), nats.Name("natsgo-app"))
	must(err)
	direct, err := nats.Connect(directURL, nats.NoReconnect())
	must(err)

	responder(app, "go.svc.app", "app:")
	responder(direct, "go.svc.direct", "direct:")
	must(app.Flush())
	must(direct.Flush())
	results["toApp"] = request(direct, "go.svc.app", "one", "from-direct")
	results["toDirect"] = request(app, "go.svc.direct", "two", "from-app")

	started := time.Now()
	_, err = app.Request("go.nobody.home", []byte("?"), 5*time.Second)
	results["noResponders"] = map[string]any{
		"isNoResponders": errors.Is(err, nats.ErrNoResponders),
		"ms":             time.Since(started).Milliseconds(),
	}

	started = time.Now()
	_, err = app.Request("go.refused", []byte("?"), 5*time.Second)
	results["refused"] = map[string]any{
		"isNoResponders": errors.Is(err, nats.ErrNoResponders),
		"ms":             time.Since(started).Milliseconds(),
		"error":          fmt.Sprint(err),
	}

	var a, b int64
	qa, err := app.QueueSubscribe("go.work", "workers", func(*nats.Msg) { atomic.AddInt64(&a, 1) })
	must(err)
	qb, err := app.QueueSubscribe("go.work", "workers", func(*nats.Msg) { atomic.AddInt64(&b, 1) })
	must(err)
	must(app.Flush())
	must(app.Flush())
	for i := 0; i < 200; i++ {
		must(direct.Publish("go.work", []byte(strconv.Itoa(i))))
	}
	must(direct.Flush())
	deadline := time.Now().Add(5 * time.Second)
	for atomic.LoadInt64(&a)+atomic.LoadInt64(&b) < 200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive by now
	results["queue"] = map[string]int64{"a": atomic.LoadInt64(&a), "b": atomic.LoadInt64(&b)}
	must(qa.Unsubscribe())
	must(qb.Unsubscribe())

	payload := make([]byte, 128)
	for i := 0; i < count; i++ {
		must(app.Publish("go.count", payload))
	}
	must(app.Flush())
	results["published"] = count

	must(app.Drain())
	for app.IsDraining() {
		time.Sleep(10 * time.Millisecond)
	}
	direct.Close()
	out, err := json.Marshal(results)
	must(err)
	fmt.Println(string(out))
}
