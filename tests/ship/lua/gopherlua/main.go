// argocd-health runs an Argo CD health.lua the way Argo CD's Lua VM does (util/lua/lua.go in
// github.com/argoproj/argo-cd/v3 v3.5.7): GopherLua with SkipOpenLibs and only the package, base
// and table libraries opened (argocd-cm scripts get no string/math/io unless useOpenLibs is set),
// the object converted as decodeValue does and set as the global `obj`, a 1-second deadline, and the
// returned table read as {status, message}; a status outside Argo CD's set reads as Unknown.
//
// Usage: argocd-health HEALTH_LUA < objects.json (a JSON array of objects)
// Output: one JSON line per object: {"status": ..., "message": ..., "error": ...}.
// Built by tests/ship/test_health_lua.py into a cache folder outside the repository.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

var validStatus = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

func main() {
	if len(os.Args) != 2 {
		fail(fmt.Errorf("usage: argocd-health HEALTH_LUA < objects.json"))
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var objects []any
	if err := dec.Decode(&objects); err != nil {
		fail(err)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, o := range objects {
		if err := enc.Encode(run(string(script), normalize(o))); err != nil {
			fail(err)
		}
	}
}

// normalize turns json.Number into what unstructured objects hold: int64 for integers, float64 otherwise.
func normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = normalize(x[i])
		}
		return x
	case map[string]any:
		for k := range x {
			x[k] = normalize(x[k])
		}
		return x
	}
	return v
}

func run(script string, obj any) result {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			return result{Error: err.Error()}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return result{Error: err.Error()}
	}
	ret := l.Get(-1)
	tbl, ok := ret.(*lua.LTable)
	if !ok {
		return result{Error: fmt.Sprintf("expect table output from health.lua, got %s", ret.Type())}
	}
	res := result{Status: luaString(tbl.RawGetString("status")), Message: luaString(tbl.RawGetString("message"))}
	if !validStatus[res.Status] {
		return result{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return res
}

func luaString(v lua.LValue) string {
	if s, ok := v.(lua.LString); ok {
		return string(s)
	}
	return ""
}

// decodeValue is Argo CD's conversion of an unstructured object into Lua values.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "argocd-health:", err)
	os.Exit(2)
}
