// Renders an Ollama Modelfile TEMPLATE the way Ollama does for one request without .Messages:
// Go's text/template, executed with .System, .Prompt and an empty .Response, the template cut at
// .Response (Ollama drops what follows it when it builds the prompt of the last turn).
// Usage: go run ollama_render.go TEMPLATE_FILE VALUES_JSON  (prints the rendered prompt to stdout)
package main

import (
	"encoding/json"
	"os"
	"text/template"
	"text/template/parse"
)

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

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var values map[string]any
	if err := json.Unmarshal([]byte(os.Args[2]), &values); err != nil {
		panic(err)
	}
	values["Response"] = ""
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(string(text)))
	tree := &parse.Tree{Root: cutAtResponse(tmpl.Tree.Root)}
	cut := template.Must(template.New("").AddParseTree("", tree))
	if err := cut.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
