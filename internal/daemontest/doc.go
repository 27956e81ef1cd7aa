// Package daemontest holds the tests of the mynet binary as a whole: each
// builds cmd/mynet, starts it in a throwaway network namespace and drives
// it only through what an operator and the engine see (its socket, its
// flags, its exit status, its log and the ls/inspect/doctor commands), so
// that the suite checks behaviour, not any package's internals. It needs
// root; without it the tests skip.
package daemontest
