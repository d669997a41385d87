// Command kstatus prints the kstatus verdict on one Kubernetes object, the way Flux and
// kpt compute health: it reads the object as JSON on stdin and writes
// {"status": ..., "message": ...} on stdout.
//
// The project's tests feed it the custom resources the operator wrote, so that the
// documented kstatus verdicts (docs/gitops.md) come from the library itself.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// Unstructured's own decoder keeps integers as int64, which kstatus needs to compare
	// metadata.generation with status.observedGeneration.
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("decoding the object: %w", err)
	}
	result, err := status.Compute(&obj)
	if err != nil {
		return fmt.Errorf("computing the status: %w", err)
	}
	return json.NewEncoder(out).Encode(verdict{Status: result.Status.String(), Message: result.Message})
}
