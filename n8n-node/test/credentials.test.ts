import type { IHttpRequestOptions } from 'n8n-workflow';
import { describe, expect, inject, it } from 'vitest';
import { RoleInjectorApi } from '../credentials/RoleInjectorApi.credentials';
import { httpRequest } from './context';
import { API_KEY } from './globalSetup';

const credential = new RoleInjectorApi();
const request: IHttpRequestOptions = { url: 'http://worker/v1/roles', method: 'GET' };

/** Runs the credential's test request the way n8n does: resolved, authenticated, sent. */
async function testCredential(url: string, apiKey = ''): Promise<number> {
	const { baseURL, ...rest } = credential.test.request;
	expect(baseURL).toBe('={{$credentials.url}}');
	const options = await credential.authenticate({ url, apiKey }, {
		...rest,
		baseURL: url,
		ignoreHttpStatusErrors: true,
		returnFullResponse: true,
	} as IHttpRequestOptions);
	const response = (await httpRequest(options)) as { statusCode: number };
	return response.statusCode;
}

describe('Role Injector API credential', () => {
	it('sends the key as a bearer token', async () => {
		const options = await credential.authenticate({ apiKey: 'k1' }, request);

		expect(options.headers).toEqual({ Authorization: 'Bearer k1' });
	});

	it('sends no Authorization header without a key', async () => {
		expect(await credential.authenticate({ apiKey: '' }, request)).toEqual(request);
		expect(await credential.authenticate({}, request)).toEqual(request);
	});

	it('defaults to a worker on localhost:8000', () => {
		expect(credential.properties.find((property) => property.name === 'url')?.default).toBe(
			'http://localhost:8000',
		);
	});

	it('test request passes with the right URL and key', async () => {
		expect(await testCredential(inject('workerUrl'))).toBe(200);
		expect(await testCredential(inject('securedWorkerUrl'), API_KEY)).toBe(200);
	});

	it('test request fails with a wrong or missing key', async () => {
		expect(await testCredential(inject('securedWorkerUrl'), 'wrong-key')).toBe(401);
		expect(await testCredential(inject('securedWorkerUrl'))).toBe(401);
	});

	it('test request fails when nothing listens at the URL', async () => {
		await expect(testCredential(inject('closedUrl'))).rejects.toMatchObject({
			cause: { code: 'ECONNREFUSED' },
		});
	});
});
