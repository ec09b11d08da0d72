// Swagger UI on the server's own document, with no request to anywhere else: the online
// validator (validator.swagger.io) is switched off.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
