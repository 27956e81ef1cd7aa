package plugin

import (
	"os"
	"testing"
	"time"
)

// TestMain shortens the wait for a dying port owner (see
// ProgramExternalConnectivity): tests of real conflicts would each wait 5 s.
func TestMain(m *testing.M) {
	ownerGoneWait = 100 * time.Millisecond
	os.Exit(m.Run())
}
