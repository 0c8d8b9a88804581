package embedded_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/natsroute/natsroute/bus"
)

// The permission sets of README's "Security" section, one per role.
var rolePermissions = map[string]*server.Permissions{
	"router": {
		Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", "$JS.FC.>", "$KV.natsroute.>", "$SRV.PING.natsroute", "health.*.probe", "_INBOX.>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"health.*", "route.>", "$SRV.>", "_INBOX.>"}},
		Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	},
	"node-1": { // answers its own probes, and no one else's
		Publish:   &server.SubjectPermission{Allow: []string{"health.node-1"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"health.node-1.probe"}},
		Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	},
	"client": {
		Publish:   &server.SubjectPermission{Allow: []string{"route.request", "route.ring", "route.nodes", "route.pools", "route.feedback"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	},
	"cache": {
		Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", "$JS.FC.>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	},
	"stranger": { // may report as node-2 but not ask for routes, nor report failures
		Publish:   &server.SubjectPermission{Allow: []string{"health.node-2"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	},
	"node-3": { // node-1's set without allow_responses: not in README, it shows why
		Publish:   &server.SubjectPermission{Allow: []string{"health.node-3"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"health.node-3.probe"}},
	},
}

// securityCase sets up a server's authentication and returns the client
// options of each role.
type securityCase struct {
	name  string
	setup func(t *testing.T, o *server.Options) map[string][]nats.Option
}

func TestSecurity(t *testing.T) {
	cases := []securityCase{
		{"users", func(t *testing.T, o *server.Options) map[string][]nats.Option {
			opts := map[string][]nats.Option{}
			for role, p := range rolePermissions {
				o.Users = append(o.Users, &server.User{Username: role, Password: role + "-secret", Permissions: p})
				opts[role] = []nats.Option{nats.UserInfo(role, role+"-secret")}
			}
			return opts
		}},
		{"nkeys", func(t *testing.T, o *server.Options) map[string][]nats.Option {
			opts := map[string][]nats.Option{}
			for role, p := range rolePermissions {
				kp, err := nkeys.CreateUser()
				if err != nil {
					t.Fatal(err)
				}
				pub, _ := kp.PublicKey()
				o.Nkeys = append(o.Nkeys, &server.NkeyUser{Nkey: pub, Permissions: p})
				opts[role] = []nats.Option{nats.Nkey(pub, kp.Sign)}
			}
			return opts
		}},
		{"tls client certificates", func(t *testing.T, o *server.Options) map[string][]nats.Option {
			ca := newCA(t)
			o.TLSConfig = &tls.Config{
				Certificates: []tls.Certificate{ca.issue(t, "server", true)},
				ClientCAs:    ca.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
			}
			o.TLS, o.TLSVerify, o.TLSMap, o.TLSTimeout = true, true, true, 5
			opts := map[string][]nats.Option{}
			for role, p := range rolePermissions {
				// With TLSMap the certificate's DNS name is the user name.
				o.Users = append(o.Users, &server.User{Username: role, Permissions: p})
				cert := ca.issue(t, role, false)
				opts[role] = []nats.Option{nats.Secure(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.pool, MinVersion: tls.VersionTLS12})}
			}
			return opts
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var roles map[string][]nats.Option
			s := runServer(t, func(o *server.Options) { roles = c.setup(t, o) })
			refused := make(chan error, 100) // permission violations the server reports back
			as := func(role string) *nats.Conn {
				return connect(t, s.ClientURL(), append(roles[role], nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
					select {
					case refused <- err:
					default:
					}
				}))...)
			}

			// The router runs with only the router role's permissions.
			r := startRouter(t, as("router"), testConfig(t))
			node := as("node-1")
			health(t, node, "node-1", okHealth)
			waitFor(t, 5*time.Second, "node-1 to join", func() bool { return members(r) == "node-1" })

			// node-1 may not speak for node-2: the server refuses the publish
			// (asynchronously), and the ring is untouched.
			before := r.Stats().ReportsAccepted
			health(t, node, "node-2", okHealth)
			health(t, node, "node-1", okHealth) // a sentinel after it, same connection
			waitFor(t, 5*time.Second, "the sentinel", func() bool { return r.Stats().ReportsAccepted > before })
			if got := r.Stats().ReportsAccepted; got != before+1 || members(r) != "node-1" {
				t.Fatalf("accepted %d reports (want 1 more), members %s", got-before, members(r))
			}
			select {
			case err := <-refused:
				if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), `"health.node-2"`) {
					t.Fatalf("node-1's connection was told %v, want a permissions violation on health.node-2", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the server did not refuse node-1's report for node-2")
			}

			// node-1's Reporter answers its probes (subscribe on its own
			// probe subject, and allow_responses), and the router may ask.
			src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return okHealth, nil })
			rep, err := bus.NewReporter(node, "node-1", src, time.Hour, bus.WithReporterLogger(testLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer rep.Close()
			if err := node.Flush(); err != nil { // the server has its subscription
				t.Fatal(err)
			}
			prober := as("router")
			if m, err := prober.Request(bus.ProbeSubject("node-1"), nil, 5*time.Second); err != nil {
				t.Fatalf("probe of node-1 with the router's permissions: %v", err)
			} else if h, err := bus.DecodeHealth("node-1", m.Data, m.Header); err != nil || !h.Probe {
				t.Fatalf("node-1's probe answer %+v, %v", h, err)
			}
			// node-1 may not answer node-2's probes (and so keep a dead
			// node-2 on the ring): the server refuses the subscription,
			// asynchronously, and a probe of node-2 finds nobody.
			if _, err := node.Subscribe(bus.ProbeSubject("node-2"), func(m *nats.Msg) { _ = m.Respond([]byte("{}")) }); err != nil {
				t.Fatal(err)
			}
			wantRefused(t, refused, "Subscription", bus.ProbeSubject("node-2"))
			if _, err := prober.Request(bus.ProbeSubject("node-2"), nil, 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
				t.Fatalf("a probe of node-2 while node-1 tried to answer it: %v, want no responders", err)
			}
			// Without allow_responses a node's answers are refused: its
			// probes time out, as a hung node's would.
			node3 := as("node-3")
			rep3, err := bus.NewReporter(node3, "node-3", src, time.Hour, bus.WithReporterLogger(testLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer rep3.Close()
			if err := node3.Flush(); err != nil { // the server has its subscription
				t.Fatal(err)
			}
			if _, err := prober.Request(bus.ProbeSubject("node-3"), nil, time.Second); !errors.Is(err, nats.ErrTimeout) {
				t.Fatalf("a probe of node-3, which may not respond: %v, want a timeout", err)
			}
			wantRefused(t, refused, "Publish", "_INBOX.")
			if err := rep3.Close(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "node-3 to leave", func() bool { return members(r) == "node-1" })

			// A caller with publish on route.feedback reports a failure: the
			// router counts it (and probes node-1, which answers). One
			// without it publishes too, but nothing reaches the router.
			client, _ := bus.NewClient(as("client"))
			stranger, _ := bus.NewClient(as("stranger"), bus.WithTimeout(300*time.Millisecond))
			fb := r.Stats().Feedback
			if err := client.ReportFailure(ctxT(t), "node-1", bus.WithReason("refused"), bus.WithAck()); err != nil {
				t.Fatalf("client's ReportFailure: %v", err)
			}
			if got := r.Stats().Feedback; got["probed"] != fb["probed"]+1 {
				t.Fatalf("feedback %v after the client's report, before %v: want one more probed", got, fb)
			}
			fb = r.Stats().Feedback
			if err := stranger.ReportFailure(ctxT(t), "node-1", bus.WithReason("refused")); err != nil {
				t.Fatalf("stranger's ReportFailure (the refusal is asynchronous): %v", err)
			}
			wantRefused(t, refused, "Publish", bus.SubjectFeedback)
			// A sentinel from the client: once the router has counted it,
			// it would have counted the stranger's.
			if err := client.ReportFailure(ctxT(t), "node-1", bus.WithAck()); err != nil {
				t.Fatal(err)
			}
			if got := r.Stats().Feedback; total(got) != total(fb)+1 {
				t.Fatalf("feedback %v after the stranger's report and the sentinel, before %v: want the sentinel alone", got, fb)
			}
			// The router's own probes of node-1 went through.
			waitFor(t, 5*time.Second, "the router's probe of node-1 to be answered", func() bool { return r.Stats().Probes["answered"] > 0 })
			if st := r.Stats(); st.Probes["timeout"]+st.Probes["no_responders"]+st.Probes["error"] != 0 || st.MembersDown != 0 || members(r) != "node-1" {
				t.Fatalf("probes %v, downs %d, members %s", st.Probes, st.MembersDown, members(r))
			}

			// A client gets answers; so do the micro discovery subjects.
			if n, err := client.Pick(ctxT(t), "user-42"); err != nil || n != "node-1" {
				t.Fatalf("client Pick: %q, %v", n, err)
			}
			// A RingCache reads the bucket with the cache role.
			js, _ := jetstream.New(as("cache"))
			cache, err := bus.WatchRing(ctxT(t), js, "", bus.WithRingCacheLogger(testLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Close()
			if n, err := cache.Get("user-42"); err != nil || n != "node-1" {
				t.Fatalf("cache Get: %q, %v", n, err)
			}
			// A user without permission on route.request gets no answer.
			if n, err := stranger.Pick(context.Background(), "user-42"); err == nil || n != "" {
				t.Fatalf("a user without permission got %q, %v", n, err)
			} else if !errors.Is(err, bus.ErrTimeout) && !errors.Is(err, bus.ErrNoRouter) {
				t.Logf("stranger's error: %v", err)
			}
			// Without credentials the server refuses the connection.
			if nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(0)); err == nil {
				nc.Close()
				t.Fatal("connected without credentials")
			}
			// The router still writes the ring with its permissions.
			h := okHealth
			h.Status = bus.StatusDraining
			health(t, node, "node-1", h)
			waitFor(t, 5*time.Second, "node-1 to drain", func() bool { return members(r) == "node-1(draining)" })
			if err := cache.WaitRevision(ctxT(t), r.Revision()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func total(counts map[string]uint64) (n uint64) {
	for _, c := range counts {
		n += c
	}
	return n
}

// wantRefused waits for the server to report a permissions violation of
// kind (Publish, Subscription) on a subject starting with subject.
func wantRefused(t *testing.T, refused <-chan error, kind, subject string) {
	t.Helper()
	want := fmt.Sprintf("%s to %q", kind, subject)
	want = want[:len(want)-1] // a prefix of the subject
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-refused:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), want) {
				return
			}
			t.Logf("another refusal meanwhile: %v", err)
		case <-timeout:
			t.Fatalf("the server did not refuse %s", want)
		}
	}
}

// testCA issues certificates for 127.0.0.1 servers and named clients.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "natsroute test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t *testing.T, name string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, DNSNames: []string{name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
