// Package layout holds no code, only a test that keeps the tree within the
// house limits: no production Go file over 500 lines, no function over 70
// lines, and imports that point only down the layers of the rule table in
// layout_test.go. It reads the source, not the build, so it needs no
// privileges and runs in a second; scripts/test.sh runs it as its own step.
package layout
