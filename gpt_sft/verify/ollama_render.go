// Renders an Ollama Modelfile TEMPLATE the way Ollama builds a prompt, with Go's text/template.
//
// A template without .Messages (a single-turn checkpoint's) is executed for one request with .System, .Prompt and
// an empty .Response, cut at .Response (Ollama drops what follows it when it builds the prompt of the last turn).
// A template that uses .Messages (a conversation checkpoint's) is executed once, whole, as Ollama does for such
// templates: .Messages holds every message (consecutive messages of one role merged), .System the system messages'
// contents, and nothing is cut.
//
// Usage: ollama_render TEMPLATE_FILE VALUES_JSON  (prints the rendered prompt to stdout). VALUES_JSON is
// {"System": ..., "Prompt": ...} for one request, or {"messages": [{"role": ..., "content": ...}, ...]}; a JSON array
// of such objects renders each (gpt-sft verify's many held-out entries in one process) and prints a JSON array of the
// renderings. VALUES_JSON "-" reads it from stdin. gpt-sft builds it once with Go (gpt_sft/verify/ollama_check.py).
package main

import (
	"encoding/json"
	"io"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

// Message has the fields a template reads from each of Ollama's messages.
type Message struct {
	Role    string
	Content string
}

// cutAtResponse keeps the nodes up to and including the first {{ .Response }} of the top level.
func cutAtResponse(list *parse.ListNode) *parse.ListNode {
	out := &parse.ListNode{NodeType: parse.NodeList, Pos: list.Pos}
	for _, node := range list.Nodes {
		out.Nodes = append(out.Nodes, node)
		if action, ok := node.(*parse.ActionNode); ok {
			for _, cmd := range action.Pipe.Cmds {
				for _, arg := range cmd.Args {
					if field, ok := arg.(*parse.FieldNode); ok {
						for _, ident := range field.Ident {
							if ident == "Response" {
								return out
							}
						}
					}
				}
			}
		}
	}
	return out
}

// usesMessages says whether any field or variable of the template is named Messages (Ollama's test, by name).
func usesMessages(node parse.Node) bool {
	switch n := node.(type) {
	case *parse.ListNode:
		for _, child := range n.Nodes {
			if usesMessages(child) {
				return true
			}
		}
	case *parse.ActionNode:
		return usesMessages(n.Pipe)
	case *parse.IfNode:
		return usesMessages(&n.BranchNode)
	case *parse.RangeNode:
		return usesMessages(&n.BranchNode)
	case *parse.WithNode:
		return usesMessages(&n.BranchNode)
	case *parse.BranchNode:
		return usesMessages(n.Pipe) || usesMessages(n.List) || (n.ElseList != nil && usesMessages(n.ElseList))
	case *parse.PipeNode:
		if n == nil {
			return false
		}
		for _, cmd := range n.Cmds {
			for _, arg := range cmd.Args {
				if usesMessages(arg) {
					return true
				}
			}
		}
	case *parse.FieldNode:
		for _, ident := range n.Ident {
			if strings.EqualFold(ident, "Messages") {
				return true
			}
		}
	}
	return false
}

// conversation is what Ollama gives a .Messages template: the system messages' contents joined by a blank line,
// and the messages with consecutive ones of the same role merged into one.
func conversation(raw []map[string]string) (string, []*Message) {
	var system []string
	var merged []*Message
	for _, m := range raw {
		if m["role"] == "system" {
			system = append(system, m["content"])
		}
		if len(merged) > 0 && merged[len(merged)-1].Role == m["role"] {
			merged[len(merged)-1].Content += "\n\n" + m["content"]
		} else {
			merged = append(merged, &Message{Role: m["role"], Content: m["content"]})
		}
	}
	return strings.Join(system, "\n\n"), merged
}

// render executes the template for one request's values, as Ollama builds that request's prompt.
func render(tmpl *template.Template, raw json.RawMessage, out *strings.Builder) error {
	if usesMessages(tmpl.Tree.Root) {
		var request struct {
			Messages []map[string]string `json:"messages"`
		}
		if err := json.Unmarshal(raw, &request); err != nil {
			return err
		}
		system, messages := conversation(request.Messages)
		return tmpl.Execute(out, map[string]any{"System": system, "Messages": messages, "Response": ""})
	}
	var values map[string]any
	if err := json.Unmarshal(raw, &values); err != nil {
		return err
	}
	values["Response"] = ""
	tree := &parse.Tree{Root: cutAtResponse(tmpl.Tree.Root)}
	return template.Must(template.New("").AddParseTree("", tree)).Execute(out, values)
}

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(string(text)))
	arg := json.RawMessage(os.Args[2])
	if os.Args[2] == "-" { // the values on stdin: a command line holds at most 128 KiB
		if arg, err = io.ReadAll(os.Stdin); err != nil {
			panic(err)
		}
	}
	var many []json.RawMessage
	if json.Unmarshal(arg, &many) != nil {
		var out strings.Builder
		if err := render(tmpl, arg, &out); err != nil {
			panic(err)
		}
		os.Stdout.WriteString(out.String())
		return
	}
	rendered := make([]string, len(many))
	for i, raw := range many {
		var out strings.Builder
		if err := render(tmpl, raw, &out); err != nil {
			panic(err)
		}
		rendered[i] = out.String()
	}
	if err := json.NewEncoder(os.Stdout).Encode(rendered); err != nil {
		panic(err)
	}
}
