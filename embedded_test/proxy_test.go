package embedded_test

import (
	"net"
	"strings"
	"sync"
	"testing"
)

// linkProxy is a TCP proxy between clients and a NATS server whose link
// can be cut: while cut it forwards nothing in either direction but closes
// nothing, as a partition does (the kernel still takes what each side
// sends, up to its buffers; nothing arrives). Restore forwards again, and
// whatever was held back arrives then, as TCP would deliver it after a
// partition heals.
type linkProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup // the accept loop and the pumps

	mu       sync.Mutex // guards everything below
	open     *sync.Cond // broadcast when cut or closed changes
	cut      bool
	closed   bool
	conns    []net.Conn
	accepted int
}

// startProxy listens on a free port of 127.0.0.1 and forwards each
// connection to target (host:port, or a nats:// URL); cleanup closes it.
func startProxy(t testing.TB, target string) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target = strings.TrimPrefix(target, "nats://")
	p := &linkProxy{ln: ln, target: target}
	p.open = sync.NewCond(&p.mu)
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

// URL is the proxy's address as a NATS URL.
func (p *linkProxy) URL() string { return "nats://" + p.ln.Addr().String() }

// Cut stops forwarding in both directions; no connection is closed.
func (p *linkProxy) Cut() { p.set(true) }

// Restore forwards again, held-back bytes first.
func (p *linkProxy) Restore() { p.set(false) }

func (p *linkProxy) set(cut bool) {
	p.mu.Lock()
	p.cut = cut
	p.mu.Unlock()
	p.open.Broadcast()
}

// Accepted is how many client connections the proxy has taken so far.
func (p *linkProxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *linkProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.accepted++
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Go(func() { p.pump(s, c) })
		p.wg.Go(func() { p.pump(c, s) })
	}
}

// pump copies src to dst, holding each chunk it read while the link is
// cut. When either side ends it closes both, as a proxy must.
func (p *linkProxy) pump(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // EOF, a reset or closed: the other side ends too
			return
		}
	}
}

// wait blocks while the link is cut; false once the proxy is closed.
func (p *linkProxy) wait() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.cut && !p.closed {
		p.open.Wait()
	}
	return !p.closed
}

// close stops accepting, closes every connection and waits for the pumps.
func (p *linkProxy) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.mu.Unlock()
	p.open.Broadcast()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
