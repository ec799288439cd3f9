import type {
	IDataObject,
	IExecuteFunctions,
	IHttpRequestMethods,
	ILoadOptionsFunctions,
	IN8nHttpFullResponse,
	JsonObject,
} from 'n8n-workflow';
import { NodeApiError } from 'n8n-workflow';

export const CREDENTIAL_TYPE = 'roleInjectorApi';

type Context = IExecuteFunctions | ILoadOptionsFunctions;

/**
 * Calls the Role Injector worker and returns its JSON answer. Any failure becomes a NodeApiError:
 * the worker's own error (code, message, details) or, when it cannot be reached, the URL tried.
 */
export async function workerRequest(
	this: Context,
	method: IHttpRequestMethods,
	path: string,
	body?: IDataObject,
	itemIndex?: number,
): Promise<IDataObject> {
	const credentials = await this.getCredentials(CREDENTIAL_TYPE);
	const url = `${String(credentials.url ?? '').replace(/\/+$/, '')}${path}`;

	let response: IN8nHttpFullResponse;
	try {
		// Status codes are checked below so that the worker's error body reaches the user.
		response = (await this.helpers.httpRequestWithAuthentication.call(this, CREDENTIAL_TYPE, {
			method,
			url,
			body,
			json: true,
			ignoreHttpStatusErrors: true,
			returnFullResponse: true,
		})) as IN8nHttpFullResponse;
	} catch (error) {
		throw unreachableError(this, url, error, itemIndex);
	}

	const { statusCode, body: answer } = response;
	if (statusCode >= 400) {
		throw workerError(this, url, statusCode, answer, itemIndex);
	}
	if (!isObject(answer)) {
		throw new NodeApiError(this.getNode(), { body: String(answer) } as JsonObject, {
			itemIndex,
			httpCode: String(statusCode),
			message: `The server at ${url} did not answer like a Role Injector worker`,
			description: 'Check the worker URL in the "Role Injector API" credential.',
		});
	}
	return answer;
}

function workerError(
	context: Context,
	url: string,
	statusCode: number,
	answer: unknown,
	itemIndex?: number,
): NodeApiError {
	const error = isObject(answer) && isObject(answer.error) ? answer.error : undefined;
	if (!error || typeof error.message !== 'string') {
		return new NodeApiError(context.getNode(), { body: String(answer) } as JsonObject, {
			itemIndex,
			httpCode: String(statusCode),
			message: `The server at ${url} answered HTTP ${statusCode}`,
			description: typeof answer === 'string' ? answer.slice(0, 500) : undefined,
		});
	}

	const code = typeof error.code === 'string' ? error.code : 'error';
	const details = isObject(error.details) ? { ...error.details } : {};
	let description = `Worker error "${code}" (HTTP ${statusCode}).`;
	// The worker's message already names the close role names ("did you mean ...?").
	delete details.suggestions;
	if (code === 'missing_variable') {
		description +=
			' Set it in this node under Options → Variables (a name and a value), or in Options → Variables (JSON).';
	}
	if (Object.keys(details).length > 0) {
		description += ` Details: ${JSON.stringify(details)}`;
	}
	return new NodeApiError(context.getNode(), answer as JsonObject, {
		itemIndex,
		httpCode: String(statusCode),
		message: error.message,
		description,
	});
}

function unreachableError(
	context: Context,
	url: string,
	error: unknown,
	itemIndex?: number,
): NodeApiError {
	const reason = networkReason(error);
	const apiError = new NodeApiError(
		context.getNode(),
		{ message: reason },
		{
			itemIndex,
			description:
				'Is the worker running? Check the worker URL in the "Role Injector API" credential.',
		},
	);
	// Set afterwards: NodeApiError swaps any message that mentions ECONNREFUSED and the like
	// for a generic text, which would hide the URL that failed.
	apiError.message = `Cannot reach the Role Injector worker at ${url}: ${reason}`;
	return apiError;
}

/**
 * The innermost cause says what went wrong on the network (e.g. "connect ECONNREFUSED
 * 127.0.0.1:9"); the outer errors are wrappers (n8n's NodeApiError, fetch's "fetch failed").
 */
function networkReason(error: unknown): string {
	let reason = 'unknown error';
	const seen = new Set<unknown>();
	let current: unknown = error;
	while (isObject(current) && !seen.has(current)) {
		seen.add(current);
		const text = describe(current);
		if (text) reason = text;
		current = current.cause;
	}
	return reason;
}

function describe(error: IDataObject): string {
	if (typeof error.message === 'string' && error.message) return error.message;
	// Node reports a host that resolves to several addresses as an AggregateError with no message.
	if (Array.isArray(error.errors)) {
		const messages = error.errors
			.map((inner) => (isObject(inner) ? describe(inner) : ''))
			.filter(Boolean);
		if (messages.length > 0) return messages.join('; ');
	}
	return typeof error.code === 'string' ? error.code : '';
}

function isObject(value: unknown): value is IDataObject {
	return typeof value === 'object' && value !== null && !Array.isArray(value);
}
