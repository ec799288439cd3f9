import type {
	ILoadOptionsFunctions,
	INodeListSearchItems,
	INodeListSearchResult,
} from 'n8n-workflow';
import { workerRequest } from '../transport';

type RoleSummary = { name: string; description?: string; tokens?: number };

/** Roles of GET /v1/roles whose name or description contains the search text. */
export async function searchRoles(
	this: ILoadOptionsFunctions,
	filter?: string,
): Promise<INodeListSearchResult> {
	const answer = await workerRequest.call(this, 'GET', '/v1/roles');
	const roles = (Array.isArray(answer.roles) ? answer.roles : []) as RoleSummary[];
	const needle = (filter ?? '').trim().toLowerCase();

	const results: INodeListSearchItems[] = roles
		.filter(
			(role) =>
				!needle ||
				role.name.toLowerCase().includes(needle) ||
				(role.description ?? '').toLowerCase().includes(needle),
		)
		.map((role) => ({ name: label(role), value: role.name }));
	return { results };
}

// n8n's list shows only an entry's name, on one line cut off at the list's width (no tooltip), so
// the size goes right after the name and the description last.
function label(role: RoleSummary): string {
	let text = role.name;
	if (typeof role.tokens === 'number') text += ` · ${thousands(role.tokens)} tokens`;
	if (role.description) text += ` — ${role.description}`;
	return text;
}

function thousands(n: number): string {
	return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
