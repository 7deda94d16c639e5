"""What speaks HTTP: the application, its handlers, middlewares, page and OpenAPI document."""
