package router

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
)

// legacyProbe watches for routers of an earlier release sharing the
// bucket (see watchLegacy).
type legacyProbe struct {
	r      *Router
	legacy atomic.Bool // a router of an earlier release shares the bucket
}

// poolsVersion is the first service version whose routers know pools and
// ring document format 2. Routers of earlier versions put every node into
// the default ring and refuse format 2.
const poolsVersion = "0.2.0"

// legacyProbeWait is how long a probe gathers the PING replies of the
// routers on the service subject.
const legacyProbeWait = 250 * time.Millisecond

// watchLegacy pings the natsroute micro service now and every Resync and
// sets r.legacy while a router of an earlier release answers. Such a router
// ignores pools and writes every reporting node into the default ring; the
// default pool's writer then keeps them there too instead of fighting it
// (a write loop), and no pool publishes shed (format 2), which it would
// refuse. Both end once no legacy router answers.
func (l *legacyProbe) watchLegacy(ctx context.Context) {
	r := l.r
	t := time.NewTicker(r.cfg.Resync)
	defer t.Stop()
	for {
		old := r.probeLegacy(ctx)
		switch was := r.legacy.Swap(old != ""); {
		case old != "" && !was:
			r.stats.legacyRouters.Store(1)
			r.log.Warn("a router of an earlier release shares this bucket: it ignores pools and puts every node into the default ring, so this router keeps them there too and publishes no shed until it is upgraded (see README, Upgrading)",
				"version", old)
			r.wakeAll()
		case old == "" && was:
			r.stats.legacyRouters.Store(0)
			r.log.Info("no router of an earlier release answers any more; pools and shed apply in full")
			r.wakeAll()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeLegacy returns the version of a router older than poolsVersion that
// answers $SRV.PING, or "".
func (l *legacyProbe) probeLegacy(ctx context.Context) string {
	r := l.r
	inbox := r.nc.NewRespInbox()
	replies := make(chan *nats.Msg, 64)
	sub, err := r.nc.ChanSubscribe(inbox, replies)
	if err != nil {
		return ""
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := r.nc.PublishRequest("$SRV.PING."+bus.ServiceName, inbox, nil); err != nil {
		return ""
	}
	wait := time.NewTimer(legacyProbeWait)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-wait.C:
			return ""
		case m := <-replies:
			var ping struct {
				Version string `json:"version"`
			}
			if json.Unmarshal(m.Data, &ping) == nil && olderVersion(ping.Version, poolsVersion) {
				return ping.Version
			}
		}
	}
}

// olderVersion reports whether semantic version a is below b (major, minor
// and patch; anything after them is ignored). An unparsable a is not older.
func olderVersion(a, b string) bool {
	pa, okA := parseVersion(a)
	pb, _ := parseVersion(b)
	if !okA {
		return false
	}
	for i := range pa {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return false
}

func parseVersion(v string) ([3]int, bool) {
	var out [3]int
	v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "-")
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return out, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, false
		}
		out[i] = n
	}
	return out, true
}
