package router

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/follow"
)

// BenchmarkApply measures what a RingCache does per watched revision on a
// 51-member ring: decode the document and rebuild the ring with one member
// joined or left.
func BenchmarkApply(b *testing.B) {
	docs := make([][]byte, 2)
	var err error
	for k := range docs {
		d := bus.NewRingDocument(150)
		for i := range 50 + k {
			d.Nodes = append(d.Nodes, bus.RingNode{ID: fmt.Sprintf("node-%02d", i), Weight: 1})
		}
		if docs[k], err = d.Encode(); err != nil {
			b.Fatal(err)
		}
	}
	f, err := follow.New(ringCodec, 150, bus.RingKey, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := bus.DecodeRingDocument(docs[1]); err != nil {
				b.Fatal(err)
			}
		}
	})
	rev := uint64(0)
	b.Run("decode+apply", func(b *testing.B) {
		for b.Loop() {
			rev++
			d, err := bus.DecodeRingDocument(docs[rev%2])
			if err != nil {
				b.Fatal(err)
			}
			if !f.Apply(d, rev) {
				b.Fatal("not applied")
			}
		}
	})
}
