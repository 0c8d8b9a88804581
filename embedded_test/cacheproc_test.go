package embedded_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
)

// cacheProcEnv, set to a NATS URL, makes the test binary a cache process
// for BenchmarkPropagation: RingCaches in their own process, as in an
// application, instead of in the process of the server and the router.
const cacheProcEnv = "NATSROUTE_BENCH_CACHE_PROC"

// cacheProcCaches is how many RingCaches a cache process runs.
const cacheProcCaches = 3

// runCacheProc serves the cache process protocol on stdin and stdout:
//
//	child:  ready
//	parent: <node> <1 member|0 not> <caches to wait for>
//	child:  armed
//	(the parent publishes the change)
//	child:  <wall clock, ns, when the last of those caches showed it>
func runCacheProc(url string, in io.Reader, out io.Writer) error {
	var caches []*bus.RingCache
	for range cacheProcCaches {
		nc, c, err := dialRingCache(url, "natsroute-bench-cache")
		if err != nil {
			return err
		}
		defer nc.Close()
		defer c.Close()
		caches = append(caches, c)
	}
	say := lineWriter(out)
	if err := say("ready"); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var id string
		var member, n int
		if _, err := fmt.Sscan(sc.Text(), &id, &member, &n); err != nil || n < 1 || n > len(caches) {
			return fmt.Errorf("cache process: bad command %q", sc.Text())
		}
		if err := say("armed"); err != nil {
			return err
		}
		waitMember(caches[:n], id, member == 1)
		if err := say(strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil {
			return err
		}
	}
	return sc.Err()
}

// dialRingCache connects to url as name and follows the default pool's
// ring on that connection, as an application's cache does; the caller
// closes both.
func dialRingCache(url, name string) (*nats.Conn, *bus.RingCache, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.Timeout(10*time.Second))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var c *bus.RingCache
		c, err = bus.WatchRing(ctx, js, "")
		cancel()
		if err == nil {
			return nc, c, nil
		}
	}
	nc.Close()
	return nil, nil, err
}

// waitMember waits until every cache shows id as a member, or as none.
func waitMember(caches []*bus.RingCache, id string, member bool) {
	for _, c := range caches {
		for {
			rev := c.Revision() // before looking, so a change in between is not missed
			if _, ok := c.Snapshot().Member(id); ok == member {
				break
			}
			_ = c.WaitRevision(context.Background(), rev+1)
		}
	}
}

// cacheProc is the parent's end of a cache process.
type cacheProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startCacheProc(b *testing.B, url string) *cacheProc {
	b.Helper()
	cmd, in, out := startChild(b, cacheProcEnv+"="+url)
	p := &cacheProc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	b.Cleanup(func() {
		in.Close() // the child's command loop ends
		if err := cmd.Wait(); err != nil {
			b.Errorf("cache process: %v", err)
		}
	})
	if line := p.line(b); line != "ready" {
		b.Fatalf("cache process said %q, want ready", line)
	}
	return p
}

func (p *cacheProc) line(b *testing.B) string {
	b.Helper()
	if !p.out.Scan() {
		b.Fatalf("cache process ended: %v", p.out.Err())
	}
	return strings.TrimSpace(p.out.Text())
}

// change arms the cache process for id's new state, calls publish, and
// returns the time from just before publish to the last of n caches
// showing the change (wall clock in both processes).
func (p *cacheProc) change(b *testing.B, id string, member bool, n int, publish func()) time.Duration {
	b.Helper()
	m := 0
	if member {
		m = 1
	}
	if _, err := fmt.Fprintf(p.in, "%s %d %d\n", id, m, n); err != nil {
		b.Fatal(err)
	}
	if line := p.line(b); line != "armed" {
		b.Fatalf("cache process said %q, want armed", line)
	}
	t0 := time.Now()
	publish()
	ns, err := strconv.ParseInt(p.line(b), 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Unix(0, ns).Sub(t0)
}
