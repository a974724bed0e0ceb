'use strict'
// The seed documents' JavaScript examples, verbatim: used by seeds.test.js and by
// scripts/test-node.sh, which runs one against the npm tarball installed outside the repo.

const CLOUD = `const ngrok = require("@ngrok/ngrok");
const fs = require("fs");

(async function () {
	const listener = await ngrok.forward({
		addr: 8080,
		authtoken_from_env: true,
		proto: "tls",
		domain: "app.example.com",
		crt: fs.readFileSync("/path/to/app-example-com-crt.pem", "utf8"),
		key: fs.readFileSync("/path/to/app-example-com-key.pem", "utf8"),
	});

	console.log(\`Ingress established at: \${listener.url()}\`);
})();
`

const UPSTREAM = `const ngrok = require("@ngrok/ngrok");

(async function () {
	const listener = await ngrok.forward({
		addr: 8080,
		authtoken_from_env: true,
		proto: "tls",
		domain: "app.example.com",
	});

	console.log(\`Ingress established at: \${listener.url()}\`);
})();
`

module.exports = { CLOUD, UPSTREAM }
