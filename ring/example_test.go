package ring_test

import (
	"fmt"

	"github.com/natsroute/natsroute/ring"
)

// A member that sheds hands the keys it sheds to the next members on the
// ring, and keeps the rest; nobody else's keys move.
func ExampleSnapshot_GetN_shed() {
	members := []ring.Member{{ID: "node-1"}, {ID: "node-2"}, {ID: "node-3"}}
	r, _ := ring.New(ring.Config{}, members...)
	plain, _ := r.GetN("user-8", 3)

	members[0].Shed = 0.5 // node-1 sheds half its keys, user-8 among them
	_ = r.Set(members)
	shed, _ := r.GetN("user-8", 3)
	fmt.Println(plain, "->", shed, "shedding:", r.Snapshot().Shedding())
	// u(user-8, node-1) = 0.4226...: a shed of 0.42 would keep the key.
	fmt.Println(ring.Sheds("user-8", "node-1", 0.42), ring.Sheds("user-8", "node-1", 0.5))
	// Output:
	// [node-1 node-3 node-2] -> [node-3 node-2 node-1] shedding: 1
	// false true
}
