"""The tool gateway: MCP at /mcp in front of MCP servers and OpenAPI-described APIs."""
