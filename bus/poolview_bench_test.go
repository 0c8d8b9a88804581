package bus

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/ring"
)

// BenchmarkPoolChange compares what a reader pays for one member joining
// or leaving a pool of n members:
//
//   - v3: a PoolView applies the member's entry (decode included) and
//     publishes a snapshot patched from the previous one;
//   - document: today's format-1/2 reader, which decodes the whole new
//     document and applies it with ring.Set (diff, then patch);
//   - rebuild: decoding the whole document and building its ring afresh.
//
// Each iteration alternates a join and a leave of the same member.
func BenchmarkPoolChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		nodes := make([]RingNode, n)
		for i := range nodes {
			nodes[i] = RingNode{ID: fmt.Sprintf("node-%05d", i), Weight: 1}
		}
		without := RingDocument{Format: 1, Hash: DocumentHash, VNodes: 150, Nodes: nodes}
		with := without
		with.Nodes = append(append([]RingNode{}, nodes...), RingNode{ID: "node-zzzzz", Weight: 1})
		docs := [2][]byte{}
		var err error
		if docs[0], err = with.Encode(); err != nil {
			b.Fatal(err)
		}
		if docs[1], err = without.Encode(); err != nil {
			b.Fatal(err)
		}

		b.Run(fmt.Sprintf("v3/members=%d", n), func(b *testing.B) {
			v, _ := NewPoolView(DefaultPool)
			rev := uint64(1)
			_ = v.Apply(put(PoolKeyV3(DefaultPool), `{"format":3,"hash":"xxhash64","vnodes":150}`, rev))
			for _, nd := range nodes {
				rev++
				_ = v.Apply(put(MemberKey(DefaultPool, nd.ID), `{"weight":1}`, rev))
			}
			mustPublish(b, v)
			key := MemberKey(DefaultPool, "node-zzzzz")
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				rev++
				e := fakeEntry{key: key, value: []byte(`{"weight":1}`), rev: rev, op: jetstream.KeyValuePut}
				if i%2 == 1 {
					e.op, e.value = jetstream.KeyValueDelete, nil
				}
				if err := v.Apply(e); err != nil {
					b.Fatal(err)
				}
				if s := mustPublish(b, v); s.Ring.Len() != n+1-i%2 {
					b.Fatalf("%d members", s.Ring.Len())
				}
			}
		})
		b.Run(fmt.Sprintf("document/members=%d", n), func(b *testing.B) {
			rg, err := ring.New(ring.Config{VirtualNodes: 150}, without.Members()...)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				d, err := DecodeRingDocument(docs[i%2])
				if err != nil {
					b.Fatal(err)
				}
				if err := rg.Set(d.Members()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("rebuild/members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := range b.N {
				d, err := DecodeRingDocument(docs[i%2])
				if err != nil {
					b.Fatal(err)
				}
				if _, err := d.Ring(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
