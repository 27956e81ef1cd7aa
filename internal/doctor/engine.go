package doctor

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/mynet/mynet/internal/cli"
)

// oldestEngine is the oldest Docker engine the e2e suite runs against
// (Debian bookworm's docker.io); older ones are untested, not refused.
var oldestEngine = [2]int{20, 10}

// checkEngine names the engine the docker CLI reaches and warns when it is
// older than the suite's oldest.
func (d *doctor) checkEngine(ctx context.Context) {
	eng := cli.AskEngine(ctx, d.env)
	d.report.Engine = eng.Version
	d.add(engineFinding(eng))
}

// engineFinding is the engine check's finding, apart from the doctor's
// state for the table test.
func engineFinding(eng cli.Engine) (check, status, msg, fix string) {
	oldest := fmt.Sprintf("%d.%d", oldestEngine[0], oldestEngine[1])
	if eng.Version == "" {
		return "engine", statusSkipped, fmt.Sprintf("the Docker engine's version is unknown: %v", eng.Err), ""
	}
	major, minor, ok := engineRelease(eng.Version)
	switch {
	case !ok:
		return "engine", statusInfo, fmt.Sprintf("Docker %s: not a version this check can compare with %s, the oldest engine mynet is tested with", eng.Version, oldest), ""
	case major < oldestEngine[0] || major == oldestEngine[0] && minor < oldestEngine[1]:
		return "engine", statusWarning,
			fmt.Sprintf("Docker %s is older than %s, the oldest engine mynet is tested with: it may work, nothing proves it", eng.Version, oldest),
			fmt.Sprintf("upgrade the Docker engine to %s or newer (e.g. apt-get install docker.io from Debian bookworm or later, or docker-ce)", oldest)
	}
	return "engine", statusOK, fmt.Sprintf("Docker %s (mynet is tested with %s and newer)", eng.Version, oldest), ""
}

// engineRelease reads the year.month of an engine version such as
// 20.10.24+dfsg1, 28.5.2, 17.06.2-ce or v29.0.0.
func engineRelease(v string) (major, minor int, ok bool) {
	v = strings.TrimPrefix(v, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minorText := strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	minor, err2 := strconv.Atoi(minorText)
	return major, minor, err1 == nil && err2 == nil
}
