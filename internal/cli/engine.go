package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Engine is the Docker engine the commands talk to through the docker CLI,
// the same path that gives them Docker's names.
type Engine struct {
	// Version is the engine's (docker version's Server.Version); empty
	// when it did not answer.
	Version string
	// Err says why there is no version.
	Err error
}

// AskEngine asks env's docker CLI for the engine's version; a missing CLI
// or engine is not an error of the command, it is said in the output.
func AskEngine(ctx context.Context, env *Env) Engine {
	if env.DockerVersion == nil {
		return Engine{Err: errors.New("no docker CLI configured")}
	}
	v, err := env.DockerVersion(ctx)
	if err == nil && v == "" {
		err = errors.New("docker version printed no server version")
	}
	if err != nil {
		return Engine{Err: err}
	}
	return Engine{Version: v}
}

// String is the engine as the tables show it.
func (e Engine) String() string {
	if e.Version != "" {
		return "Docker " + e.Version
	}
	return fmt.Sprintf("unknown (%v); Docker's names are left out", e.Err)
}

// dockerVersionCLI asks the docker CLI for the engine's version.
func dockerVersionCLI(ctx context.Context) (string, error) {
	if _, err := exec.LookPath("docker"); err != nil {
		return "", errors.New("no docker CLI in PATH")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		// The CLI prints the client's part and then why the server did
		// not answer; the first line of stderr is the reason.
		why, _, _ := strings.Cut(strings.TrimSpace(errOut.String()), "\n")
		if why == "" {
			why = err.Error()
		}
		return "", fmt.Errorf("docker version: %s", why)
	}
	return strings.TrimSpace(out.String()), nil
}
