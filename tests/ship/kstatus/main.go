// kstatus-compute prints how Kubernetes status tooling reads each object it is given:
//
//   - "kstatus": sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the kstatus library;
//   - "flux":    github.com/fluxcd/cli-utils (Flux's fork of kstatus, what kustomize-controller's
//     wait/healthChecks use when no CEL expression matches the kind);
//   - "cel":     github.com/fluxcd/pkg/runtime/cel.StatusEvaluator with the expressions given as
//     flags (a Kustomization's spec.healthCheckExprs entry). An evaluation error reads as Unknown,
//     as in Flux's generic status reader: the health check keeps waiting.
//
// Input on stdin: a JSON array of objects, or one JSON/YAML object.
// Output on stdout: one JSON line per object.
// Built by tests/ship/test_kstatus.py into a cache folder outside the repository.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	fluxstatus "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

type output struct {
	Kstatus result  `json:"kstatus"`
	Flux    result  `json:"flux"`
	CEL     *result `json:"cel,omitempty"`
}

func main() {
	current := flag.String("current", "", "CEL expression: Current")
	failed := flag.String("failed", "", "CEL expression: Failed")
	inProgress := flag.String("in-progress", "", "CEL expression: InProgress")
	flag.Parse()

	var evaluator *cel.StatusEvaluator
	if *current != "" {
		var err error
		evaluator, err = cel.NewStatusEvaluator(&kustomize.HealthCheckExpressions{
			Current: *current, Failed: *failed, InProgress: *inProgress,
		})
		if err != nil {
			fail(err)
		}
	}

	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		fail(err)
	}
	var docs []json.RawMessage
	if err := json.Unmarshal(js, &docs); err != nil {
		docs = []json.RawMessage{js}
	}
	enc := json.NewEncoder(os.Stdout)
	for _, doc := range docs {
		var out output
		// Unstructured's own decoder: integers stay int64, as they are when read from the API server.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(doc); err != nil {
			fail(err)
		}
		if res, err := status.Compute(u); err != nil {
			out.Kstatus.Error = err.Error()
		} else {
			out.Kstatus = result{Status: res.Status.String(), Message: res.Message}
		}
		if res, err := fluxstatus.Compute(u); err != nil {
			out.Flux.Error = err.Error()
		} else {
			out.Flux = result{Status: res.Status.String(), Message: res.Message}
		}
		if evaluator != nil {
			if res, err := evaluator.Evaluate(context.Background(), u); err != nil {
				out.CEL = &result{Status: fluxstatus.UnknownStatus.String(), Error: err.Error()}
			} else {
				out.CEL = &result{Status: res.Status.String(), Message: res.Message}
			}
		}
		if err := enc.Encode(out); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus-compute:", err)
	os.Exit(2)
}
