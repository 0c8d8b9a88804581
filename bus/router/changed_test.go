package router

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus"
)

// TestChangedMatchesWhole holds the writer's two ways of deciding to the
// same answers. Woken for named nodes only, it decides just those
// (desiredFor), which is right only if every change to what a member's
// entry depends on names its node or wakes the whole pool, and the sweep's
// due() catches what time alone changes. The test drives a pool through
// seeded random reports, leaves, draining, moves between pools, downs,
// ejections (begun, ended early, over by time), other routers' writes of
// member keys, nodes this router never heard from, a router of an earlier
// release coming and going, and time passing (with the sweep and the
// ejector's timer run as the router runs them). It flushes the way the
// writer does at random points in between (so changes gather as they do in
// a burst), has its writes come back as the watch brings them, and checks
// at each flush that the named-only answer is desired's whole one.
func TestChangedMatchesWhole(t *testing.T) {
	for seed := range 100 {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { checkChanged(t, uint64(seed), 400) })
	}
}

func checkChanged(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 22))
	clock := time.Unix(2_000_000, 0)
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Now = func() time.Time { return clock }
	cfg.MemberTTL = time.Second
	cfg.EjectMaxPercent = 50
	if seed%2 == 1 {
		cfg.BalanceFactor = 1.25 // sheds on: other routers write them
	}
	r := testRouter(t, cfg)
	r.started = clock
	p := r.pool(bus.DefaultPool)

	var kvRev uint64
	publish := func(doc bus.RingDocument) {
		kvRev++
		p.ring.Publish(doc, kvRev, nil)
	}
	publish(bus.NewRingDocument(150))

	reporting := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	strangers := []string{"x", "y"} // never report to this router
	seq := map[string]uint64{}
	var log []string // the steps so far, for a failure's message
	step := func(format string, args ...any) { log = append(log, fmt.Sprintf(format, args...)) }
	value := func(n bus.RingNode) []byte {
		data, err := memberValue(n).Encode(bus.JSON)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	// writeBack records this router's writes from base to want as its
	// writer would, and publishes want as the watch would bring it back.
	writeBack := func(base, want bus.RingDocument) {
		for _, n := range want.Nodes {
			if o, ok := base.Node(n.ID); !ok || memberValue(o) != memberValue(n) {
				kvRev++
				p.v3.wrote(bus.MemberKey(p.name, n.ID), kvRev, value(n))
			}
		}
		for _, o := range base.Nodes {
			if _, ok := want.Node(o.ID); !ok {
				key := bus.MemberKey(p.name, o.ID)
				p.v3.deleted(key)
				kvRev++
				p.v3.observe(key, kvRev, false, nil, clock)
			}
		}
		publish(want)
	}
	flush := func() {
		v := p.ring.Current()
		whole := p.whole.Swap(false)
		ids := p.takeNamed()
		changes := p.desiredFor(v.Doc, v.Rev, ids)
		want := p.desired(v.Doc, v.Rev)
		if !whole {
			got := applyChanges(v.Doc, changes)
			if !got.Equal(want) {
				t.Fatalf("seed %d: after\n  %s\nthe writer named %v only and would write\n  %v\nbut desired wants\n  %v\n(ring was %v)",
					seed, strings.Join(log, "\n  "), ids, got.Nodes, want.Nodes, v.Doc.Nodes)
			}
		}
		step("flush (whole %v, named %v) -> %v", whole, ids, want.Nodes)
		if !want.Equal(v.Doc) {
			writeBack(v.Doc, want)
		}
	}
	pick := func(ids []string) string { return ids[rng.IntN(len(ids))] }

	for range steps {
		switch k := rng.IntN(100); {
		case k < 40: // a report
			id := pick(reporting)
			seq[id]++
			h := bus.Health{Seq: seq[id], Weight: float64(1 + rng.IntN(3))}
			switch s := rng.IntN(20); {
			case s < 3:
				h.Status = bus.StatusLeaving
			case s < 6:
				h.Status = bus.StatusDraining
			}
			switch rng.IntN(6) {
			case 0:
				h.Pools = []string{"other"}
			case 1:
				h.Pools = []string{bus.DefaultPool, "other"}
			}
			step("%s reports weight %v status %q pools %v", id, h.Weight, h.Status, h.Pools)
			if err := r.observe(id, h); err != nil {
				t.Fatal(err)
			}
		case k < 55: // time passes; the sweep and the ejector's timer run
			d := time.Duration(rng.IntN(700)) * time.Millisecond
			clock = clock.Add(d)
			step("%v pass", d)
			if p.due() {
				p.whole.Store(true)
			}
			r.ej.endOver(clock)
		case k < 62: // probes find a node down
			id := pick(reporting)
			step("%s is down", id)
			r.live.markDown(id, downNoResponders, "down: test", clock)
		case k < 68: // an ejection begins
			id := pick(reporting)
			kvRev++
			rec := bus.Ejection{Failures: 5, Callers: 2, Seconds: 0.5 + 2*rng.Float64(), Repeat: 1}
			step("%s ejected for %.2fs", id, rec.Seconds)
			r.ej.apply(p, id, rec, kvRev, clock, time.Now())
		case k < 71: // an ejection key deleted by hand
			id := pick(reporting)
			kvRev++
			step("%s's ejection key deleted", id)
			r.ej.end(p, id, kvRev, "deleted")
		case k < 86: // another router writes a member key
			ids := append(slices.Clone(reporting), strangers...)
			id := pick(ids)
			doc := p.ring.Current().Doc
			nodes := slices.DeleteFunc(slices.Clone(doc.Nodes), func(n bus.RingNode) bool { return n.ID == id })
			key := bus.MemberKey(p.name, id)
			kvRev++
			if rng.IntN(3) == 0 {
				step("another router deletes %s", id)
				p.v3.observe(key, kvRev, false, nil, clock)
			} else {
				n := bus.RingNode{ID: id, Weight: float64(1 + rng.IntN(3))}
				if rng.IntN(4) == 0 {
					n.Status = bus.StatusDraining
				} else if rng.IntN(3) == 0 {
					n.Shed = 0.25
				}
				step("another router writes %+v", n)
				p.v3.observe(key, kvRev, true, value(n), clock)
				nodes = append(nodes, n)
				slices.SortFunc(nodes, cmpNodes)
			}
			doc.Nodes = nodes
			p.ring.Publish(doc.WithFormat(), kvRev, nil)
			p.wakeFor(id) // publish does so for news of a member's key
		case k < 88: // a router of an earlier release comes or goes
			on := !r.legacy.Load()
			step("legacy router present: %v", on)
			r.legacy.Store(on)
			r.wakeAll()
		default:
			flush()
		}
		if rng.IntN(3) == 0 {
			flush()
		}
	}
	flush()
}

// applyChanges is what a writer that decided only the nodes of changes
// makes of base.
func applyChanges(base bus.RingDocument, changes []memberChange) bus.RingDocument {
	out := base
	out.Nodes = slices.Clone(base.Nodes)
	for _, c := range changes {
		out.Nodes = slices.DeleteFunc(out.Nodes, func(n bus.RingNode) bool { return n.ID == c.id })
		if c.isIn {
			out.Nodes = append(out.Nodes, c.want)
		}
	}
	slices.SortFunc(out.Nodes, cmpNodes)
	return out.WithFormat()
}

// TestV3KeysOthersAt pins whose write a key's last news is: another
// router's write stays newer than this router's older reports even after
// this router re-writes the key (say, to take a shed off while keeping
// their weight), and this router's own write never counts, even when the
// watch brings it back before the write returns.
func TestV3KeysOthersAt(t *testing.T) {
	t0 := time.Unix(3_000_000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	var s v3Keys
	const key = "members.default.a"
	s.observe(key, 1, true, []byte("1"), at(1)) // another router's write
	if !s.writtenAfter(key, at(0)) || s.writtenAfter(key, at(1)) {
		t.Fatal("another router's write at 1 s must be newer than a report at 0 s only")
	}
	s.wrote(key, 2, []byte("2")) // this router's, keeping their news
	if !s.writtenAfter(key, at(0)) {
		t.Fatal("this router's own write made another's news look old")
	}
	s.observe(key, 2, true, []byte("2"), at(2)) // its echo
	s.observe(key, 3, true, []byte("3"), at(3)) // this router's next write, echoed before the write returned
	s.wrote(key, 3, []byte("3"))
	if s.writtenAfter(key, at(2)) || !s.writtenAfter(key, at(0)) {
		t.Fatal("an echo that came before its write returned counted as another router's")
	}
	s.deleted(key) // this router's delete, and its marker
	s.observe(key, 4, false, nil, at(4))
	if s.writtenAfter(key, at(2)) {
		t.Fatal("this router's own delete counted as another router's")
	}
	s.observe(key, 5, false, nil, at(5)) // a delete by another (say, by hand)
	if !s.writtenAfter(key, at(4)) {
		t.Fatal("another's delete at 5 s is not newer than a report at 4 s")
	}
}
