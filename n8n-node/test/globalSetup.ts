/* eslint-disable @n8n/community-nodes/no-restricted-imports, @n8n/community-nodes/no-restricted-globals,
   @n8n/community-nodes/no-dangerous-functions --
   These rules keep node code fit for n8n Cloud. This file is test harness only (never built or
   shipped): it has to start the real Python worker as a child process. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
	export interface ProvidedContext {
		/** A worker without an API key. */
		workerUrl: string;
		/** A worker started with ROLE_INJECTOR_API_KEY=test-key. */
		securedWorkerUrl: string;
		/** A local port nothing listens on. */
		closedUrl: string;
	}
}

export const API_KEY = 'test-key';
const REPO = path.resolve(__dirname, '../..');
const WORKER_BIN = path.join(REPO, '.venv/bin/role-injector');
const ROLES_DIR = path.join(__dirname, 'fixtures/roles');
const START_TIMEOUT_MS = 60_000;

export default async function setup(project: TestProject) {
	if (!existsSync(WORKER_BIN)) {
		throw new Error(`${WORKER_BIN} is missing: create the repo's .venv first (make test does).`);
	}
	const started = await Promise.allSettled([start({}), start({ ROLE_INJECTOR_API_KEY: API_KEY })]);
	const workers = started.flatMap((result) =>
		result.status === 'fulfilled' ? [result.value] : [],
	);
	const teardown = async () => {
		await Promise.all(workers.map(stop));
	};
	const failed = started.find((result) => result.status === 'rejected');
	if (failed) {
		await teardown();
		throw failed.reason;
	}
	project.provide('workerUrl', workers[0].url);
	project.provide('securedWorkerUrl', workers[1].url);
	project.provide('closedUrl', `http://127.0.0.1:${await freePort()}`);
	return teardown;
}

type Worker = { url: string; child: ChildProcess };

async function start(extraEnv: Record<string, string>): Promise<Worker> {
	const port = await freePort();
	const url = `http://127.0.0.1:${port}`;
	const env = { ...process.env, ...extraEnv };
	if (!extraEnv.ROLE_INJECTOR_API_KEY) delete env.ROLE_INJECTOR_API_KEY;
	const args = ['serve', '--host', '127.0.0.1', '--port', String(port), '--roles', ROLES_DIR];
	// Own process group, so that stopping it also stops gunicorn's workers.
	const child = spawn(WORKER_BIN, [...args, '--workers', '1'], {
		env,
		detached: true,
		stdio: ['ignore', 'pipe', 'pipe'],
	});
	let log = '';
	child.stdout?.on('data', (chunk: Buffer) => (log += chunk.toString()));
	child.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));

	const worker = { url, child };
	const deadline = Date.now() + START_TIMEOUT_MS;
	while (Date.now() < deadline) {
		if (child.exitCode !== null || child.signalCode !== null) {
			throw new Error(`The worker exited before it was ready:\n${log}`);
		}
		try {
			if ((await fetch(`${url}/healthz`)).ok) return worker;
		} catch {
			// Not listening yet.
		}
		await sleep(100);
	}
	await stop(worker);
	throw new Error(
		`The worker did not answer ${url}/healthz within ${START_TIMEOUT_MS} ms:\n${log}`,
	);
}

async function stop({ child }: Worker): Promise<void> {
	if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
	const exited = new Promise((resolve) => child.once('exit', resolve));
	const signal = (name: NodeJS.Signals) => {
		try {
			process.kill(-child.pid!, name);
		} catch {
			// The group is gone already.
		}
	};
	signal('SIGTERM');
	const timer = new AbortController();
	const timeout = sleep(15_000, 'timeout', { signal: timer.signal }).catch(() => 'cancelled');
	const first = await Promise.race([exited, timeout]);
	timer.abort();
	if (first === 'timeout') {
		signal('SIGKILL');
		await exited;
	}
}

function freePort(): Promise<number> {
	return new Promise((resolve, reject) => {
		const server = createServer();
		server.once('error', reject);
		server.listen(0, '127.0.0.1', () => {
			const address = server.address();
			server.close(() =>
				typeof address === 'object' && address
					? resolve(address.port)
					: reject(new Error('no port')),
			);
		});
	});
}
