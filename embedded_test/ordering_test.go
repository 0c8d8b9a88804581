package embedded_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// TestNewestReportWins reproduces, from outside, the sequence that let a
// node's older report win: nodes report once, the router writes them into
// the ring (which makes them known to ResourceAware as neutral), and only
// then does one of them report again. Until issue 18 the first reports sat
// in a batch that nothing flushed on the ingest path, the second report went
// straight in, and the next read applied the batch over it. Each case
// checks ResourceAware's picks and route.nodes within 100 ms of the second
// report being accepted.
//
// Earlier tests missed it because they reported each node once, or waited
// (and read) between reports, which flushed the batch in between.
func TestNewestReportWins(t *testing.T) {
	cases := []struct {
		name   string
		second bus.Health
		check  func(n bus.NodeStatus) error
		picked bool // whether node-3 may still be picked by ResourceAware
	}{
		{"cpu 97%", bus.Health{CPUUsage: 97, MemoryUsage: 20, ActiveConnections: 5}, func(n bus.NodeStatus) error {
			if n.CPUUsage != 97 || n.Eligible {
				return fmt.Errorf("cpu %v eligible %v, want 97 and excluded", n.CPUUsage, n.Eligible)
			}
			return nil
		}, false},
		{"draining", bus.Health{CPUUsage: 20, MemoryUsage: 20, ActiveConnections: 5, Status: bus.StatusDraining}, func(n bus.NodeStatus) error {
			if n.Status != bus.StatusDraining || n.Eligible {
				return fmt.Errorf("status %q eligible %v, want draining and not eligible", n.Status, n.Eligible)
			}
			return nil
		}, false},
		{"changed value", bus.Health{CPUUsage: 55, MemoryUsage: 33, ActiveConnections: 700}, func(n bus.NodeStatus) error {
			if n.CPUUsage != 55 || n.MemoryUsage != 33 || n.Connections != 700 {
				return fmt.Errorf("cpu %v memory %v connections %d, want 55, 33, 700", n.CPUUsage, n.MemoryUsage, n.Connections)
			}
			return nil
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := runServer(t)
			r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
			nc := connect(t, s.ClientURL())
			first := bus.Health{CPUUsage: 20, MemoryUsage: 20, ActiveConnections: 5}
			const nodes = 10
			for i := range nodes {
				health(t, nc, fmt.Sprintf("node-%d", i), first)
			}
			// Only the ring document is read while waiting: any read of
			// ResourceAware's view would settle the batch.
			waitFor(t, 5*time.Second, "ten members in the ring", func() bool {
				d, _ := r.Ring()
				return len(d.Nodes) == nodes
			})
			health(t, nc, "node-3", tc.second)
			handled(t, r, nc)
			deadline := time.Now().Add(100 * time.Millisecond)
			var last error
			for {
				last = nodeState(t, nc, "node-3", tc.check)
				if last == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if last != nil {
				t.Fatalf("route.nodes 100 ms after the second report: %v", last)
			}
			if !tc.picked {
				for i := range 300 {
					rep := jsonReply(t, nc, `{"strategy":"ResourceAware"}`)
					if rep.Node == "node-3" {
						t.Fatalf("pick %d went to node-3 after its report %+v", i, tc.second)
					}
				}
			}
			if tc.second.Status == bus.StatusDraining {
				waitFor(t, 5*time.Second, "the ring to mark node-3 draining", func() bool {
					d, _ := r.Ring()
					for _, n := range d.Nodes {
						if n.ID == "node-3" {
							return n.Status == bus.StatusDraining
						}
					}
					return false
				})
			}
		})
	}
}

// handled returns once the router has handled every report published on nc
// so far, without reading ResourceAware's view (a read would apply waiting
// changes and hide the order they would otherwise be applied in): it
// publishes the first report of a new node and waits for the ring to list
// it, since one subscription handles reports in order.
func handled(t testing.TB, r *router.Router, nc *nats.Conn) {
	t.Helper()
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	health(t, nc, marker, okHealth)
	waitFor(t, 5*time.Second, "the marker node in the ring", func() bool {
		d, _ := r.Ring()
		for _, n := range d.Nodes {
			if n.ID == marker {
				return true
			}
		}
		return false
	})
}

// nodeState asks route.nodes for a node and checks it.
func nodeState(t testing.TB, nc *nats.Conn, id string, check func(bus.NodeStatus) error) error {
	m := req(t, nc, bus.SubjectNodes, []byte(`{}`), nil)
	var st bus.NodesState
	if err := json.Unmarshal(m.Data, &st); err != nil {
		t.Fatalf("route.nodes reply %q: %v", clipped(m.Data), err)
	}
	for _, n := range st.Nodes {
		if n.ID == id {
			return check(n)
		}
	}
	return fmt.Errorf("%s not listed", id)
}

// TestNewestReportWinsBurst: a join burst in which every node reports
// twice back to back, while its first report may still wait in the batch
// and the ring write makes it known. After the burst every node shows its
// second report, whatever order the batch, the ring and the direct path
// took them in.
func TestNewestReportWinsBurst(t *testing.T) {
	s := runServer(t)
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	nc := connect(t, s.ClientURL())
	const nodes = 300
	for round := range 3 {
		for i := range nodes {
			h := bus.Health{CPUUsage: float64(10 + round), MemoryUsage: float64(i % 90), ActiveConnections: int64(i)}
			health(t, nc, fmt.Sprintf("burst-%03d", i), h)
		}
		if round == 0 { // the ring write makes them known between rounds
			waitFor(t, 10*time.Second, "every node in the ring", func() bool {
				d, _ := r.Ring()
				return len(d.Nodes) == nodes
			})
		}
	}
	handled(t, r, nc)
	st := r.Nodes()
	if len(st.Nodes) != nodes+1 {
		t.Fatalf("%d nodes listed, want %d and the marker", len(st.Nodes), nodes)
	}
	for _, n := range st.Nodes {
		if n.CPUUsage != 12 && n.ID[:5] == "burst" {
			t.Errorf("%s shows cpu %v, want 12 (its last report)", n.ID, n.CPUUsage)
		}
	}
}
