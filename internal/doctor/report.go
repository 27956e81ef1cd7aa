package doctor

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// writeDoctor prints the findings as a table, each fix under its problem.
func writeDoctor(w io.Writer, rep doctorReport) error {
	fmt.Fprintf(w, "mynet doctor: instance %s, socket %s\n\n", rep.Instance, rep.Socket)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tDETAIL")
	for _, f := range rep.Findings {
		status := f.Status
		switch status {
		case statusProblem:
			status = "PROBLEM"
		case statusWarning:
			status = "WARNING"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", status, f.Check, f.Message)
		for i, l := range strings.Split(f.Fix, "\n") {
			if l == "" {
				continue
			}
			label := "fix: "
			if i > 0 {
				label = "     "
			}
			fmt.Fprintf(tw, "\t\t%s%s\n", label, l)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.Problems == 0 {
		_, err := fmt.Fprintln(w, "\nno problems found")
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d problem%s found\n", rep.Problems, plural(rep.Problems))
	return err
}
