/**
 * Hand-made n8n contexts for the node's methods. Only the HTTP helpers do real work: they send
 * real requests with fetch, the way n8n's helpers do for the options the node uses, so the tests
 * talk to a real worker.
 */
import type {
	ICredentialDataDecryptedObject,
	IDataObject,
	IExecuteFunctions,
	IHttpRequestOptions,
	ILoadOptionsFunctions,
	INode,
	INodeExecutionData,
	JsonObject,
} from 'n8n-workflow';
import { NodeApiError } from 'n8n-workflow';
import { RoleInjectorApi } from '../credentials/RoleInjectorApi.credentials';

export const testNode: INode = {
	id: '5b0a3c8e-0000-4000-8000-000000000001',
	name: 'Role Injector',
	type: 'n8n-nodes-role-injector.roleInjector',
	typeVersion: 1,
	position: [0, 0],
	parameters: {},
};

/** A parameter value, or a function of the item where the workflow would have an expression. */
export type Parameter = unknown | ((item: INodeExecutionData) => unknown);

export type Credentials = { url: string; apiKey?: string };

/** Stands in for n8n's `helpers.httpRequest`: url/baseURL, method, qs, headers, body, json,
 * ignoreHttpStatusErrors, returnFullResponse. Network failures reject with fetch's error, whose
 * `cause` carries the code (e.g. ECONNREFUSED). */
export async function httpRequest(options: IHttpRequestOptions): Promise<unknown> {
	const url = new URL(
		options.baseURL
			? `${options.baseURL.replace(/\/+$/, '')}/${options.url.replace(/^\/+/, '')}`
			: options.url,
	);
	for (const [key, value] of Object.entries(options.qs ?? {})) {
		url.searchParams.append(key, String(value));
	}
	const method = options.method ?? 'GET';
	const headers = new Headers(options.headers as Record<string, string> | undefined);
	if (options.json && !headers.has('accept')) headers.set('accept', 'application/json');

	let body: string | undefined;
	if (options.body !== undefined && method !== 'GET' && method !== 'HEAD') {
		body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
		if (!headers.has('content-type')) headers.set('content-type', 'application/json');
	}

	const response = await fetch(url, { method, headers, body });
	const text = await response.text();
	let data: unknown = text;
	try {
		// Like axios: parse JSON when it is JSON, keep the text otherwise.
		data = JSON.parse(text);
	} catch {
		data = text;
	}

	if (!response.ok && !options.ignoreHttpStatusErrors) {
		throw Object.assign(new Error(`Request failed with status code ${response.status}`), {
			httpCode: String(response.status),
			response: { status: response.status, data },
		});
	}
	return options.returnFullResponse
		? {
				statusCode: response.status,
				statusMessage: response.statusText,
				headers: Object.fromEntries(response.headers),
				body: data,
			}
		: data;
}

/** Stands in for n8n's `helpers.httpRequestWithAuthentication`: lets the credential type
 * authenticate the request, sends it, and wraps any failure in a NodeApiError as n8n does. */
async function httpRequestWithAuthentication(
	this: { getNode(): INode; getCredentials(type: string): Promise<ICredentialDataDecryptedObject> },
	credentialType: string,
	options: IHttpRequestOptions,
): Promise<unknown> {
	try {
		const credentials = await this.getCredentials(credentialType);
		return await httpRequest(await new RoleInjectorApi().authenticate(credentials, options));
	} catch (error) {
		throw new NodeApiError(this.getNode(), error as JsonObject);
	}
}

function credentialsGetter(credentials: Credentials) {
	return async (type: string): Promise<ICredentialDataDecryptedObject> => {
		if (type !== 'roleInjectorApi') throw new Error(`No credentials of type "${type}"`);
		return { ...credentials };
	};
}

export type ExecuteOptions = {
	credentials: Credentials;
	parameters: Record<string, Parameter>;
	/** The json of each input item. */
	items?: IDataObject[];
	continueOnFail?: boolean;
	/** The node's type; n8n runs the tool variant as `<package>.roleInjectorTool`. */
	nodeType?: string;
};

export function executeContext(options: ExecuteOptions): IExecuteFunctions {
	const items: INodeExecutionData[] = (options.items ?? [{}]).map((json) => ({ json }));
	// The parameters as the workflow stores them: a value as it is, an expression as its text.
	const stored = Object.fromEntries(
		Object.entries(options.parameters).map(([name, value]) => [
			name,
			typeof value === 'function' ? `={{ ${name} of the item }}` : value,
		]),
	) as INode['parameters'];
	const node = { ...testNode, type: options.nodeType ?? testNode.type, parameters: stored };
	const context = {
		getNode: () => node,
		getInputData: () => items,
		continueOnFail: () => options.continueOnFail ?? false,
		getCredentials: credentialsGetter(options.credentials),
		getNodeParameter(
			name: string,
			itemIndex: number,
			fallback?: unknown,
			parameterOptions?: { extractValue?: boolean },
		): unknown {
			if (!(name in options.parameters)) {
				if (fallback !== undefined) return fallback;
				throw new Error(`Parameter "${name}" is not set`);
			}
			const parameter = options.parameters[name];
			const value = typeof parameter === 'function' ? parameter(items[itemIndex]) : parameter;
			if (parameterOptions?.extractValue && isResourceLocator(value)) return value.value;
			return value;
		},
		helpers: { httpRequest, httpRequestWithAuthentication },
	};
	return context as unknown as IExecuteFunctions;
}

export function loadOptionsContext(
	credentials: Credentials,
	parameters: Record<string, unknown> = {},
): ILoadOptionsFunctions {
	const context = {
		getNode: () => testNode,
		getCredentials: credentialsGetter(credentials),
		getCurrentNodeParameter(name: string, parameterOptions?: { extractValue?: boolean }): unknown {
			const value = parameters[name];
			if (parameterOptions?.extractValue && isResourceLocator(value)) return value.value;
			return value;
		},
		helpers: { httpRequest, httpRequestWithAuthentication },
	};
	return context as unknown as ILoadOptionsFunctions;
}

/** The value n8n stores for a resource locator parameter. */
export function roleLocator(value: string, mode: 'list' | 'name' = 'list') {
	return { __rl: true, mode, value };
}

function isResourceLocator(value: unknown): value is { __rl: true; value: unknown } {
	return typeof value === 'object' && value !== null && '__rl' in value;
}
