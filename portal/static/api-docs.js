// Swagger UI for /api/docs, set up from this file (the portal's Content-Security-Policy allows no inline script).
"use strict";
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  // "Try it out" with the portal's cookie: send the header that marks a request as the portal's own (app/guard.py).
  requestInterceptor: (request) => { request.headers["X-Portal-Request"] = "1"; return request; },
});
