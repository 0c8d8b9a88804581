package bus

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests (the
// examples start routers, reporters and caches and close them).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
