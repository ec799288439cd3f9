import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
	resolve: {
		// n8n loads nodes as CommonJS; n8n-workflow's ESM build is not loadable by Node as published.
		alias: [
			{
				find: /^n8n-workflow$/,
				replacement: fileURLToPath(
					new URL('./node_modules/n8n-workflow/dist/cjs/index.js', import.meta.url),
				),
			},
		],
	},
	test: {
		include: ['test/**/*.test.ts'],
		// Starts the real Python worker (twice: without and with an API key) for all test files.
		globalSetup: ['test/globalSetup.ts'],
		testTimeout: 30_000,
		hookTimeout: 90_000,
	},
});
