import type {
	ICredentialDataDecryptedObject,
	ICredentialTestRequest,
	ICredentialType,
	IHttpRequestOptions,
	Icon,
	INodeProperties,
} from 'n8n-workflow';

export class RoleInjectorApi implements ICredentialType {
	name = 'roleInjectorApi';

	displayName = 'Role Injector API';

	icon: Icon = {
		light: 'file:../icons/role-injector.svg',
		dark: 'file:../icons/role-injector.dark.svg',
	};

	// The worker serves the package's README as a page (the package is not on the npm registry).
	documentationUrl = 'http://localhost:8000/docs/n8n-node#credentials';

	properties: INodeProperties[] = [
		{
			displayName: 'Worker URL',
			name: 'url',
			type: 'string',
			default: 'http://localhost:8000',
			placeholder: 'http://localhost:8000',
			description: 'Base URL of the Role Injector worker, without /v1',
			required: true,
		},
		{
			displayName: 'API Key',
			name: 'apiKey',
			type: 'string',
			typeOptions: { password: true },
			default: '',
			description:
				'The key the worker was started with (ROLE_INJECTOR_API_KEY). Leave empty when the worker has none.',
		},
	];

	// A function rather than a generic header block: a worker without a key must not get an
	// empty "Authorization" header, so the header is added only when a key is set.
	async authenticate(
		credentials: ICredentialDataDecryptedObject,
		requestOptions: IHttpRequestOptions,
	): Promise<IHttpRequestOptions> {
		const apiKey = typeof credentials.apiKey === 'string' ? credentials.apiKey.trim() : '';
		if (!apiKey) return requestOptions;
		return {
			...requestOptions,
			headers: { ...requestOptions.headers, Authorization: `Bearer ${apiKey}` },
		};
	}

	// GET /v1/roles needs the key when the worker has one, so it proves both the URL and the key.
	test: ICredentialTestRequest = {
		request: {
			baseURL: '={{$credentials.url}}',
			url: '/v1/roles',
			method: 'GET',
		},
	};
}
