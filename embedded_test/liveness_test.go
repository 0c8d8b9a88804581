package embedded_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
)

// TestReporterProbe: a Reporter says interval_ms and probe, answers probes
// in the request's encoding, stops answering on Close, and does not answer
// with WithoutProbe; health.* never sees a probe.
func TestReporterProbe(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return okHealth, nil })

	reports := make(chan *nats.Msg, 100)
	sub, err := nc.ChanSubscribe(bus.SubjectHealthAll, reports)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	rep, err := bus.NewReporter(nc, "p-1", src, time.Hour, bus.WithPools("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	first := <-reports // the report NewReporter makes at once
	h, err := bus.DecodeHealth("p-1", first.Data, first.Header)
	if err != nil || h.Interval != time.Hour || !h.Probe {
		t.Fatalf("report %+v, %v; want interval 1h, probe", h, err)
	}

	for name, c := range map[string]struct {
		body []byte
		hdr  nats.Header
		json bool
	}{
		"empty":        {nil, nil, false},
		"json body":    {[]byte("{}"), nil, true},
		"content-type": {nil, nats.Header{"Content-Type": []string{"application/json"}}, true},
	} {
		m, err := nc.RequestMsg(&nats.Msg{Subject: bus.ProbeSubject("p-1"), Data: c.body, Header: c.hdr}, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: probe: %v", name, err)
		}
		if isJSON := len(m.Data) > 0 && m.Data[0] == '{'; isJSON != c.json {
			t.Fatalf("%s: answer %q, want JSON %v", name, m.Data, c.json)
		}
		h, err := bus.DecodeHealth("p-1", m.Data, nil)
		if err != nil || !h.Probe || h.Interval != time.Hour || len(h.Pools) != 1 || h.Seq == 0 {
			t.Fatalf("%s: answer %+v, %v", name, h, err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := len(reports); n != 0 {
		t.Fatalf("health.* received %d messages during probes (first %s)", n, (<-reports).Subject)
	}

	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request(bus.ProbeSubject("p-1"), nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("probe after Close: %v, want no responders", err)
	}

	quiet, err := bus.NewReporter(nc, "q-1", src, 50*time.Millisecond, bus.WithoutProbe())
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	for m := range reports {
		if m.Subject != bus.HealthSubject("q-1") {
			continue
		}
		h, err := bus.DecodeHealth("q-1", m.Data, m.Header)
		if err != nil || h.Probe || h.Interval != 0 {
			t.Fatalf("WithoutProbe report %+v, %v", h, err)
		}
		break
	}
	if _, err := nc.Request(bus.ProbeSubject("q-1"), nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("probe of a WithoutProbe node: %v, want no responders", err)
	}

	fast, err := bus.NewReporter(nc, "f-1", src, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	m, err := nc.Request(bus.ProbeSubject("f-1"), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := bus.DecodeHealth("f-1", m.Data, nil); err != nil || h.Interval != bus.MinInterval {
		t.Fatalf("a 20 ms reporter says %v, %v; want the minimum %v", h.Interval, err, bus.MinInterval)
	}
}
